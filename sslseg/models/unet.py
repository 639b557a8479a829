"""A UNet-style convolutional decoder over a backbone's multi-scale features (seed 004).

Seed 004 (Brempong et al., "Decoder Denoising Pretraining for Semantic Segmentation") puts a
TransUNet decoder (Chen et al. 2021) on its encoder and pretrains it by denoising (eq. 5/6,
sslseg.objectives.dep). The decoder here is that decoder over `backbone.forward_pyramid`:

- the encoder's coarsest map (stride r) goes through an optional 3×3 conv (TransUNet's
  `conv_more`), then one `DecoderBlock` per ×2 upsampling, log2(r) of them, the last at full
  resolution H×W; each upsamples ×2 (bilinear, as TransUNet), concatenates the encoder's skip
  at that stride if there is one, and applies two 3×3 conv + norm + ReLU;
- a final 1×1 conv (`output`) maps to `out_channels`: 3 noise channels for DeP/DDeP, the classes
  for segmentation. It is task-specific, so it never carries from one task to another
  (sslseg.models.checkpoint.load_init).

Skips: a hierarchical backbone (ResNet: 5 stage outputs at strides 2, 4, 8, 16, 32) gives them
directly. A ViT has one stride p for every block, so its skips are built UNETR-style (Hatamizadeh
et al. 2022), not from the last map alone as ViTDet's simple pyramid: the last log2(p) blocks'
maps, the deepest as the coarsest map and the k-th next deepest upsampled by k stacked 2×2
stride-2 transposed convs (+ norm + ReLU) to stride p/2^k, so the shallower the block the finer
its skip, as UNETR's z9 → p/2, z6 → p/4, z3 → p/8 (it takes every third block; `forward_pyramid`
gives the last ones). UNETR adds a 3×3 conv block after each transposed conv; here the decoder
block that takes the skip does the 3×3 convs, so the neck is transposed convs only.

Widths (model.decoder_channels × model.decoder_width): seed 004's 1× decoder is
[1024, 512, 256, 128, 64] on a stride-16 encoder, TransUNet's conv_more + four blocks. So the
list is read from its full-resolution end: the last log2(r) entries are the blocks' widths, the
entry before them (if any) is the width of the conv at the coarsest map, and earlier entries
are unused. A ViT/16 takes all five (conv 1024, blocks 512…64), a ResNet (stride 32) five blocks
without that conv, a ViT/8 the last four.

Normalisation: GroupNorm, not TransUNet's BatchNorm. It works on a batch of one, and it keeps
no running statistics: a decoder pretrained on noisy images (DeP/DDeP) would otherwise carry
BatchNorm statistics of noisy inputs into a fine-tune on clean ones, and a frozen decoder's
statistics would depend on the batch composition.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslseg.io import UserError

DEFAULT_CHANNELS = (1024, 512, 256, 128, 64)  # seed 004's 1× decoder (TransUNet-style)
WIDTHS = (1, 2, 3)  # seed 004's 1×, 2× (Cityscapes) and 3× (Pascal Context, ADE20K) decoders
OUTPUT = "output."  # the final 1×1 conv's parameter prefix inside the decoder: task-specific


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups (fewer where 32 does not divide the channels)."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ConvNormAct(nn.Sequential):
    """3×3 conv (no bias: the norm has one) → GroupNorm → ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), norm(out_channels),
                         nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """×2 bilinear upsampling → concat the skip (if any) → two ConvNormAct (TransUNet's DecoderBlock)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = ConvNormAct(in_channels + skip_channels, out_channels)
        self.conv2 = ConvNormAct(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UpNeck(nn.Sequential):
    """A ViT map (B, D, H/p, W/p) → (B, C, H/p·2^k, W/p·2^k): k × (2×2 stride-2 transposed conv
    → GroupNorm → ReLU), UNETR's projection-upsampling of a transformer block's output."""

    def __init__(self, dim: int, channels: int, k: int):
        layers: list[nn.Module] = []
        for i in range(k):
            layers += [nn.ConvTranspose2d(dim if i == 0 else channels, channels, 2, stride=2), norm(channels),
                       nn.ReLU(inplace=True)]
        super().__init__(*layers)


def decoder_widths(model: dict) -> list[int]:
    """The block widths of the `model` section: model.decoder_channels × model.decoder_width."""
    channels = list(model.get("decoder_channels", DEFAULT_CHANNELS))
    width = model.get("decoder_width", 1)
    if width not in WIDTHS:
        raise UserError(f"grid.decoder_widths: {width!r} is not one of 1, 2, 3 (seed 004's 1×/2×/3× decoders)")
    if not channels or any(not isinstance(c, int) or c < 1 for c in channels):
        raise UserError(f"model.decoder_channels: {channels} must be a list of positive integers")
    return [c * width for c in channels]


class UNetDecoder(nn.Module):
    """Backbone pyramid (`forward_pyramid(images, self.levels)`, shallow → deep) → (B, out_channels, H, W).

    Built from the backbone's `feature_info` (channels and stride of each level, as timm
    gives them) and `reduction`; the backbone itself is not kept (its weights stay `backbone.*`).
    `channels`: the block widths (`decoder_widths`), read from the full-resolution end.
    """

    def __init__(self, backbone: nn.Module, out_channels: int, channels: Sequence[int] = DEFAULT_CHANNELS):
        super().__init__()
        info, r = backbone.feature_info, backbone.reduction
        steps = int(round(math.log2(r)))
        if 2**steps != r:
            raise UserError(f"model.patch_size: the unet decoder upsamples ×2 per block, so the backbone's stride "
                            f"({r}) must be a power of 2")
        if len(channels) < steps:
            raise UserError(f"model.decoder_channels: {len(channels)} widths for {steps} ×2 upsampling blocks "
                            f"(stride {r}); give at least {steps}")
        blocks = list(channels[-steps:])
        self.isotropic = len({f["reduction"] for f in info}) == 1  # a ViT: every level at stride p
        if self.isotropic:
            # the last `steps` blocks: the deepest is the coarsest map, the others the skips at
            # strides p/2 (next deepest) … 2 (shallowest); the full-resolution block has none
            self.levels = steps
            dims = [f["num_chs"] for f in info[-steps:]]
            self.necks = nn.ModuleList(UpNeck(dims[-2 - j], blocks[j], j + 1) for j in range(steps - 1))
            skips = [blocks[j] for j in range(steps - 1)] + [0]
            self.skip_index: list[int | None] = [steps - 2 - j for j in range(steps - 1)] + [None]
        else:
            # a hierarchical backbone: the skip of the block ending at stride s is its level of stride s
            self.levels = len(info)
            strides = [f["reduction"] for f in info]
            if strides[-1] != r:
                raise UserError(f"grid.backbones: the deepest pyramid level has stride {strides[-1]}, not {r}")
            self.necks = nn.ModuleList()
            self.skip_index = [strides.index(r >> (j + 1)) if r >> (j + 1) in strides else None for j in range(steps)]
            skips = [0 if i is None else info[i]["num_chs"] for i in self.skip_index]
        dim = info[-1]["num_chs"]
        if len(channels) > steps:  # TransUNet's conv_more at the coarsest map
            self.bottleneck: nn.Module = ConvNormAct(dim, channels[-steps - 1])
            dim = channels[-steps - 1]
        else:
            self.bottleneck = nn.Identity()
        self.blocks = nn.ModuleList()
        for width, skip in zip(blocks, skips):
            self.blocks.append(DecoderBlock(dim, skip, width))
            dim = width
        self.output = nn.Conv2d(dim, out_channels, 1)

    def forward(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        """pyramid: the backbone's last `self.levels` maps, shallow → deep."""
        x = self.bottleneck(pyramid[-1])
        for j, block in enumerate(self.blocks):
            i = self.skip_index[j]
            skip = None if i is None else (self.necks[j](pyramid[i]) if self.isotropic else pyramid[i])
            x = block(x, skip)
        return self.output(x)

    def decode(self, backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, out_channels, H, W) through `backbone`'s pyramid (H, W multiples of its stride)."""
        return self(backbone.forward_pyramid(images, self.levels))


def build_decoder(backbone: nn.Module, model: dict, out_channels: int) -> UNetDecoder:
    """The UNet decoder of the `model` section (decoder_channels, decoder_width) on `backbone`."""
    return UNetDecoder(backbone, out_channels, decoder_widths(model))
