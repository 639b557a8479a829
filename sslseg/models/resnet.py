"""The ResNet family: timm's ResNet without its classifier, seen as a dense-feature backbone.

Built from timm's own class with the block/layer presets of timm's `resnet18` /
`resnet50` entry points (the same modules and parameter count as
`timm.create_model(name, num_classes=0, global_pool="")`), never with
pretrained weights: nothing is downloaded. Input pixels only (no patch masking).
"""

from __future__ import annotations

import torch
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from sslseg.io import UserError


class ResNetBackbone(ResNet):
    """timm's ResNet; maps come from the last stage (stride 32)."""

    accepts_mask = False
    batch_norm = True  # a training batch of one image fails (sslseg.config checks finetune_sizes)

    def __init__(self, name: str, **kwargs):
        super().__init__(num_classes=0, global_pool="", **kwargs)
        self.name = name
        self.reduction = self.feature_info[-1]["reduction"]

    def forward_maps(self, images: torch.Tensor, mask: torch.Tensor | None = None,
                     mask_token: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) → (B, C, H/32, W/32)."""
        if mask is not None:
            raise UserError(f"grid.backbones: {self.name} cannot mask patches (only ViT backbones can); "
                            "pair patch-masking objectives with a ViT")
        return self.forward_features(images)

    def forward_pyramid(self, images: torch.Tensor, n: int) -> list[torch.Tensor]:
        """The last `n` of the 5 stage outputs (strides 2, 4, 8, 16, 32), shallow to deep."""
        return self.forward_intermediates(images, indices=n, intermediates_only=True)

    def forward_pooled(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → global average of the final map (B, C)."""
        return self.forward_maps(images).mean((2, 3))


PRESETS: dict[str, dict] = {
    "resnet18": dict(block=BasicBlock, layers=(2, 2, 2, 2)),
    "resnet50": dict(block=Bottleneck, layers=(3, 4, 6, 3)),
}


def build_resnet(preset: dict, model: dict, drop_rate: float = 0.0) -> ResNetBackbone:
    """A ResNet of `preset` (one of PRESETS). model["patch_size"] does not apply; `drop_rate`
    neither (timm's ResNet drops out only before its classifier, which a backbone lacks:
    the objective's head has its own dropout)."""
    name, image_size = model["backbone"], model["image_size"]
    if image_size % 32:
        raise UserError(f"model.image_size: {image_size} is not a multiple of 32, the stride of {name}'s maps")
    return ResNetBackbone(name, **preset)
