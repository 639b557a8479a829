"""Backbones by name: one registry over the ViT and ResNet families, one interface.

Every backbone gives dense features as NCHW maps, so heads never see tokens:

- `num_features`: channels C of the maps; `reduction`: stride r of the final map
- `forward_maps(images, mask=None, mask_token=None)` → (B, C, H/r, W/r); only
  backbones with `accepts_mask` (ViTs) take a (B, N) patch mask
- `forward_pyramid(images, n)` → the last n levels as NCHW maps (for a decoder)
- `forward_pooled(images)` → (B, C): the class token (ViT) or a global average (ResNet)

A new family is a module in this folder with a literal `PRESETS` dict (preset name → its
arguments), a class attribute `accepts_mask`, and a builder `(preset, model, drop_rate) →
module`, plus its line in `BACKBONES` below; a new preset of a family is one `PRESETS` entry.
A family whose maps are not per-location features (e.g. a pooled embedding broadcast to a
map) sets `dense_features = False`, and the grid refuses a frozen probe on it. (sslseg.grid
reads the names and these flags from the sources to check a config without torch; a test
keeps that reading equal to `BACKBONES`.)
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn as nn

from sslseg.io import UserError
from sslseg.models import resnet, vit


class Backbone(Protocol):
    num_features: int
    reduction: int
    accepts_mask: bool
    dense_features: bool  # optional class attribute, True when absent (sslseg.grid.FLAGS)

    def forward_maps(self, images: torch.Tensor, mask: torch.Tensor | None = None,
                     mask_token: torch.Tensor | None = None) -> torch.Tensor: ...

    def forward_pyramid(self, images: torch.Tensor, n: int) -> list[torch.Tensor]: ...

    def forward_pooled(self, images: torch.Tensor) -> torch.Tensor: ...


Builder = Callable[[dict, dict, float], nn.Module]

BACKBONES: dict[str, tuple[Builder, dict]] = {
    **{name: (vit.build_vit, preset) for name, preset in vit.PRESETS.items()},
    **{name: (resnet.build_resnet, preset) for name, preset in resnet.PRESETS.items()},
}


def build_backbone(model: dict, drop_rate: float = 0.0) -> nn.Module:
    """model: {"backbone": name in BACKBONES, "image_size": int, "patch_size": int}.
    `drop_rate` is the backbone's own dropout where its family has one (ViT)."""
    name = model["backbone"]
    if name not in BACKBONES:
        raise UserError(f"grid.backbones: unknown backbone {name!r}; available: {', '.join(BACKBONES)}")
    build, preset = BACKBONES[name]
    return build(preset, model, drop_rate)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
