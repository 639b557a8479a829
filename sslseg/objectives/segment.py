"""Segmentation: backbone + a head on its maps (or a UNet decoder on its pyramid), masked
pixel-wise cross-entropy.

Pixels labelled `IGNORE` carry no loss (seed 002 eq. 1: scribbles, points). The sum over
labelled pixels is divided by all H·W pixels of the batch as the paper writes it
(`loss_norm: pixels`), or by the labelled pixels (`labelled`); for full labels the two agree.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslseg.models import build_backbone
from sslseg.models.heads import PYRAMID_HEADS, SEGMENTATION_HEADS
from sslseg.models.unet import decoder_widths

PRETRAINING = False
IGNORE = 255


def build(settings: dict) -> Segment:
    """settings: "model", "classes", "dropout" (backbone and head), "head" (pixel, linear or
    unet), "loss_norm" (pixels or labelled)."""
    return Segment(settings["model"], settings["classes"], settings["dropout"], settings.get("head", "pixel"),
                   settings.get("loss_norm", "pixels"))


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, norm: str = "pixels") -> torch.Tensor:
    """Cross-entropy summed over the pixels of `target` that are not IGNORE, divided by all its
    pixels (norm "pixels") or by the labelled ones ("labelled", at least 1): a batch with no
    labelled pixel gives 0, not NaN. No host sync: the count stays on the device."""
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE, reduction="sum")
    if norm == "pixels":
        return total / target.numel()
    return total / (target != IGNORE).sum().clamp(min=1)


class Segment(nn.Module):
    def __init__(self, model: dict, classes: int, dropout: float, head: str = "pixel", loss_norm: str = "pixels"):
        super().__init__()
        self.backbone = build_backbone(model, dropout)
        self.pyramid = head in PYRAMID_HEADS
        if self.pyramid:
            # named `decoder` as in DeP/DDeP, so a denoising-pretrained decoder loads into it;
            # no dropout of its own (TransUNet's has none): `dropout` acts in the backbone
            self.decoder = SEGMENTATION_HEADS[head](self.backbone, classes, decoder_widths(model))
        else:
            self.head = SEGMENTATION_HEADS[head](self.backbone.num_features, self.backbone.reduction, classes, dropout)
        self.loss_norm = loss_norm

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised → logits (B, classes, H, W)."""
        if self.pyramid:
            return self.decoder.decode(self.backbone, images)
        return self.head(self.backbone.forward_maps(images))

    def forward(self, batch: dict, gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """batch: "images" (B, 3, H, W) normalised, "masks" (B, H, W) long, IGNORE where unlabelled."""
        logits = self.predict(batch["images"])
        return masked_cross_entropy(logits, batch["masks"], self.loss_norm), {"logits": logits}
