"""Classification from pooled features, with MixUp (the intermediate step)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslseg.models import ClassifierHead, build_backbone

PRETRAINING = False


def build(settings: dict) -> Classify:
    """settings: "model", "classes", "dropout", "mixup_alpha" (0 = no MixUp)."""
    return Classify(settings["model"], settings["classes"], settings["dropout"], settings["mixup_alpha"])


def mixup(images: torch.Tensor, labels: torch.Tensor, classes: int, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp (Zhang et al. 2018): one λ ~ Beta(α, α) per batch, mixed with the batch reversed.

    Returns mixed images and soft targets (B, classes) whose rows sum to 1. λ is drawn on the
    images' device from its global RNG, which the training loop seeds per epoch, and stays a
    0-d tensor there: no host draw, copy or read.
    """
    target = F.one_hot(labels.long(), classes).to(images.dtype)
    if alpha <= 0:
        return images, target
    # α filled on the device (no host data to copy), float32 as Beta(α, α) makes it on the CPU
    a = torch.full((), alpha, dtype=torch.float32, device=images.device)
    lam = torch.distributions.Beta(a, a, validate_args=False).sample()  # validation would read the device
    return lam * images + (1 - lam) * images.flip(0), lam * target + (1 - lam) * target.flip(0)


class Classify(nn.Module):
    def __init__(self, model: dict, classes: int, dropout: float, mixup_alpha: float):
        super().__init__()
        self.backbone = build_backbone(model, dropout)
        self.head = ClassifierHead(self.backbone.num_features, classes, dropout)
        self.classes, self.mixup_alpha = classes, mixup_alpha

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised → logits (B, classes)."""
        return self.head(self.backbone.forward_pooled(images))

    def forward(self, batch: dict, gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """batch: "images" (B, 3, H, W) normalised, "labels" (B,). MixUp only in training."""
        images, labels = batch["images"], batch["labels"]
        if self.training:
            images, target = mixup(images, labels, self.classes, self.mixup_alpha)
        else:
            target = F.one_hot(labels.long(), self.classes).float()
        logits = self.predict(images)
        return torch.sum(-target * F.log_softmax(logits.float(), -1), -1).mean(), {"logits": logits}
