"""The ViT family: timm's VisionTransformer with dense maps, SimMIM masking and a pyramid.

`viny` is the seeds' 4.8M-parameter ViT: dim 128, depth 12, 8 heads of 64
dims (inner 512, qkv without bias), MLP 512, class token, learned position
embedding, and a patch embedding LayerNorm(p*p*3) → Linear → LayerNorm(dim)
(the vit-pytorch layout the seeds used; it accounts for their exact count).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import Attention, PatchEmbed
from timm.models.vision_transformer import VisionTransformer

from sslseg.io import UserError


class NormedPatchEmbed(PatchEmbed):
    """Patches flattened in (ph, pw, c) order → LayerNorm → Linear → LayerNorm."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768, **kwargs):
        kwargs.pop("norm_layer", None)
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         norm_layer=nn.LayerNorm, **kwargs)
        patch_dim = in_chans * self.patch_size[0] * self.patch_size[1]
        self.pre_norm = nn.LayerNorm(patch_dim)
        self.proj = nn.Linear(patch_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(self.pre_norm(patchify(x, self.patch_size[0]))))


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) → (B, N, p*p*C), patches in row-major order, pixels as (ph, pw, c)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, c: int, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """(B, N, p*p*C) → (B, C, h*p, w*p); inverse of `patchify`. `grid` = (h, w), square if None."""
    b, n, _ = x.shape
    h, w = grid or (int(n**0.5),) * 2
    x = x.reshape(b, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, h * p, w * p)


def _attention_with_head_dim(head_dim: int) -> type[Attention]:
    """timm's Attention with a fixed head width (ViNy: 8 heads x 64 = 512 > dim 128)."""

    class HeadDimAttention(Attention):
        def __init__(self, dim: int, **kwargs):
            super().__init__(dim, attn_head_dim=head_dim, **kwargs)

    return HeadDimAttention


class ViTBackbone(VisionTransformer):
    """A timm VisionTransformer without a classifier, seen as a dense-feature backbone.

    Subclassing (not wrapping) keeps timm's module tree, so state_dict keys,
    construction order and init are exactly those of `VisionTransformer`.
    """

    accepts_mask = True  # SimMIM-style patch masking

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.reduction = self.patch_embed.patch_size[0]

    def forward_tokens(self, images: torch.Tensor, mask: torch.Tensor | None = None,
                       mask_token: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) → tokens (B, prefix + N, D) after the final norm. Patch embeddings
        where `mask` (B, N) is True are replaced by `mask_token` (1, 1, D) before position
        embeddings are added (SimMIM), so a hidden patch's content cannot leak."""
        x = self.patch_embed(images)
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), mask_token.to(x.dtype).expand_as(x), x)
        x = self._pos_embed(x)
        x = self.norm_pre(x)
        x = self.blocks(x)
        return self.norm(x)

    def forward_visible(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), `keep` (B, K) long patch indices → tokens (B, 1 + K, D) after the final
        norm: the class token, then only the kept patches (MAE's encoder, models_mae.py
        forward_encoder). Position embeddings are added before the gather, so each kept token
        carries its own position; the blocks then cost K + 1 tokens, not N + 1."""
        x = self.patch_embed(images) + self.pos_embed[:, self.num_prefix_tokens:]
        x = x.gather(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = self.pos_drop(torch.cat([cls, x], dim=1))
        x = self.norm_pre(x)
        x = self.blocks(x)
        return self.norm(x)

    def forward_maps(self, images: torch.Tensor, mask: torch.Tensor | None = None,
                     mask_token: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) → patch features (B, D, H/p, W/p); see `forward_tokens` for the mask."""
        tokens = self.forward_tokens(images, mask, mask_token)[:, self.num_prefix_tokens:]
        h, w = images.shape[-2] // self.reduction, images.shape[-1] // self.reduction
        # A view of the tokens, not a copy: a head that reads it back as (B, h, w, D) sees
        # the strides of tokens[:, 1:], so its Linear takes the same kernel path as before
        # maps existed (bit-identical results).
        return tokens.unflatten(1, (h, w)).permute(0, 3, 1, 2)

    def forward_pyramid(self, images: torch.Tensor, n: int) -> list[torch.Tensor]:
        """The last `n` blocks' outputs as (B, D, H/p, W/p) maps, shallow to deep. Each goes
        through the final norm, so every level is on the scale the heads are trained on."""
        return self.forward_intermediates(images, indices=n, norm=True, output_fmt="NCHW", intermediates_only=True)

    def forward_pooled(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → the class token after the final norm (B, D)."""
        return self.forward_tokens(images)[:, 0]


PRESETS: dict[str, dict] = {
    "viny": dict(embed_dim=128, depth=12, num_heads=8, mlp_ratio=4.0, qkv_bias=False,
                 embed_layer=NormedPatchEmbed, attn_head_dim=64),
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
}


def build_vit(preset: dict, model: dict, drop_rate: float = 0.0) -> ViTBackbone:
    """A ViT of `preset` (one of PRESETS) at model["image_size"] / model["patch_size"]."""
    image_size, patch_size = model["image_size"], model["patch_size"]
    if image_size % patch_size:
        raise UserError(f"model.image_size: {image_size} is not a multiple of model.patch_size ({patch_size})")
    args = dict(preset)
    head_dim = args.pop("attn_head_dim", None)
    if head_dim is not None:
        args["attn_layer"] = _attention_with_head_dim(head_dim)
    return ViTBackbone(img_size=image_size, patch_size=patch_size, num_classes=0, global_pool="token",
                       class_token=True, pos_drop_rate=drop_rate, proj_drop_rate=drop_rate, **args)
