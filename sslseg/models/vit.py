"""ViT backbones through timm, selected by preset name.

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


def unpatchify(x: torch.Tensor, p: int, c: int) -> torch.Tensor:
    """(B, N, p*p*C) → (B, C, H, W); inverse of `patchify` for square grids."""
    b, n, _ = x.shape
    g = int(n**0.5)
    x = x.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, g * p, g * p)


def _attention_with_head_dim(head_dim: int) -> type[Attention]:
    """timm's Attention with a fixed head width (ViNy: 8 heads x 64 = 512 > dim 128)."""

    class HeadDimAttention(Attention):
        def __init__(self, dim: int, **kwargs):
            super().__init__(dim, attn_head_dim=head_dim, **kwargs)

    return HeadDimAttention


PRESETS: dict[str, dict] = {
    "viny": dict(embed_dim=128, depth=12, num_heads=8, mlp_ratio=4.0, qkv_bias=False,
                 attn_layer=None, embed_layer=NormedPatchEmbed, attn_head_dim=64),
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
}


def build_backbone(preset: str, image_size: int = 128, patch_size: int = 16, drop_rate: float = 0.0) -> VisionTransformer:
    """A timm VisionTransformer without a classifier; tokens out of `encode`."""
    if preset not in PRESETS:
        raise KeyError(f"model.preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    args = dict(PRESETS[preset])
    head_dim = args.pop("attn_head_dim", None)
    args.pop("attn_layer", None)
    if head_dim is not None:
        args["attn_layer"] = _attention_with_head_dim(head_dim)
    return VisionTransformer(img_size=image_size, patch_size=patch_size, num_classes=0, global_pool="token",
                             class_token=True, pos_drop_rate=drop_rate, proj_drop_rate=drop_rate, **args)


def encode(backbone: VisionTransformer, images: torch.Tensor, mask: torch.Tensor | None = None,
           mask_token: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens (B, 1 + N, D) after the final norm; masked patch embeddings are replaced
    by `mask_token` before position embeddings are added (SimMIM)."""
    x = backbone.patch_embed(images)
    if mask is not None:
        x = torch.where(mask.unsqueeze(-1), mask_token.to(x.dtype).expand_as(x), x)
    x = backbone._pos_embed(x)
    x = backbone.norm_pre(x)
    x = backbone.blocks(x)
    return backbone.norm(x)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
