"""Segmentation: backbone + per-patch pixel head, pixel-wise cross-entropy. Pixels labelled
`IGNORE` carry no loss (masked CE, for sparse labels such as scribbles or points)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslseg.models import PixelHead, build_backbone, encode

IGNORE = 255


class Segment(nn.Module):
    def __init__(self, model: dict, classes: int = 3, dropout: float = 0.0):
        super().__init__()
        self.backbone = build_backbone(model["preset"], model["image_size"], model["patch_size"], dropout)
        self.head = PixelHead(self.backbone.embed_dim, model["patch_size"], classes, dropout)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised → logits (B, classes, H, W)."""
        return self.head(encode(self.backbone, images)[:, self.backbone.num_prefix_tokens:])

    def forward(self, batch: dict, gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """batch: "images" (B, 3, H, W) normalised, "masks" (B, H, W) long."""
        logits = self.predict(batch["images"])
        return F.cross_entropy(logits.float(), batch["masks"], ignore_index=IGNORE), {"logits": logits}
