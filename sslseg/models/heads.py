"""Heads: a per-patch pixel head (SimMIM and segmentation) and a classifier."""

from __future__ import annotations

import torch
import torch.nn as nn

from sslseg.models.vit import unpatchify


class PixelHead(nn.Module):
    """Each patch token → patch_size² × C values, reassembled into a (B, C, H, W) map."""

    def __init__(self, dim: int, patch_size: int, channels: int, dropout: float = 0.0):
        super().__init__()
        self.patch_size, self.channels = patch_size, channels
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, patch_size * patch_size * channels)

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        return unpatchify(self.proj(self.drop(patch_tokens)), self.patch_size, self.channels)


class ClassifierHead(nn.Module):
    """Class token → logits."""

    def __init__(self, dim: int, classes: int, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, classes)

    def forward(self, cls_token: torch.Tensor) -> torch.Tensor:
        return self.proj(self.drop(cls_token))
