"""Heads on backbone features: a per-location pixel head (SimMIM, segmentation), a linear head
upsampled to pixels (frozen probes), the UNet decoder (sslseg.models.unet, seed 004) and a
classifier."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslseg.models.unet import UNetDecoder
from sslseg.models.vit import unpatchify


class PixelHead(nn.Module):
    """Each location of a (B, C, h, w) map → r×r×K values, reassembled into (B, K, h*r, w*r).

    r is the backbone's reduction: for a ViT, the patch size (a linear layer per
    patch token, the seeds' head); for a ResNet, 32.
    """

    def __init__(self, dim: int, reduction: int, channels: int, dropout: float = 0.0):
        super().__init__()
        self.reduction, self.channels = reduction, channels
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, reduction * reduction * channels)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        h, w = maps.shape[-2:]
        # Channels last without a copy: for a ViT this is the token layout again, so dropout
        # draws its mask in token order and the Linear runs on the same memory as before.
        x = self.proj(self.drop(maps.permute(0, 2, 3, 1)))
        return unpatchify(x.flatten(1, 2), self.reduction, self.channels, (h, w))


class LinearHead(nn.Module):
    """Each location of a (B, C, h, w) map → K class logits, bilinearly upsampled by the backbone's
    reduction to (B, K, h*r, w*r): seed 002's linear layer on patch tokens (DINOv2's linear probe)."""

    def __init__(self, dim: int, reduction: int, channels: int, dropout: float = 0.0):
        super().__init__()
        self.reduction = reduction
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Conv2d(dim, channels, 1)  # a linear layer per location

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        logits = self.proj(self.drop(maps))
        return F.interpolate(logits, scale_factor=self.reduction, mode="bilinear", align_corners=False)


# Segmentation heads by `finetune.head` / `probe.head`. A map head is built as (dim, reduction,
# classes, dropout) and reads `forward_maps`; a head in PYRAMID_HEADS is built on the backbone
# and reads `forward_pyramid` (sslseg.objectives.segment keeps it as `decoder`, the name DeP and
# DDeP give theirs, so a pretrained decoder's weights carry into the fine-tune).
SEGMENTATION_HEADS = {"pixel": PixelHead, "linear": LinearHead, "unet": UNetDecoder}
PYRAMID_HEADS = {"unet"}


class ClassifierHead(nn.Module):
    """Pooled features (B, C) → logits (B, classes)."""

    def __init__(self, dim: int, classes: int, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(self.drop(pooled))
