"""Segmentation: backbone + per-location pixel head, pixel-wise cross-entropy. Pixels labelled
`IGNORE` carry no loss (masked CE, for sparse labels such as scribbles or points)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslseg.models import PixelHead, build_backbone

PRETRAINING = False
IGNORE = 255


def build(settings: dict) -> Segment:
    """settings: "model", "classes", "dropout" (backbone and head)."""
    return Segment(settings["model"], settings["classes"], settings["dropout"])


class Segment(nn.Module):
    def __init__(self, model: dict, classes: int, dropout: float):
        super().__init__()
        self.backbone = build_backbone(model, dropout)
        self.head = PixelHead(self.backbone.num_features, self.backbone.reduction, classes, dropout)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised → logits (B, classes, H, W)."""
        return self.head(self.backbone.forward_maps(images))

    def forward(self, batch: dict, gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """batch: "images" (B, 3, H, W) normalised, "masks" (B, H, W) long."""
        logits = self.predict(batch["images"])
        return F.cross_entropy(logits.float(), batch["masks"], ignore_index=IGNORE), {"logits": logits}
