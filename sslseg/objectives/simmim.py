"""SimMIM: mask patches with a learnable token, predict their pixels, L1 on masked patches."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslseg.io import UserError
from sslseg.models import PixelHead, build_backbone
from sslseg.models.vit import PRESETS as VIT_PRESETS
from sslseg.models.vit import patchify

PRETRAINING = True
NEEDS_MASK = True  # masks patch embeddings: only backbones with `accepts_mask` (ViTs)


def build(settings: dict) -> SimMIM:
    """settings: "model" (the model section with its backbone), "mask_ratio"."""
    return SimMIM(settings["model"], settings["mask_ratio"])


def random_mask(noise: torch.Tensor, ratio: float) -> torch.Tensor:
    """(B, N) bool, exactly round(ratio * N) patches masked in every sample: those with the
    smallest of `noise` (B, N) uniform (`SimMIM.draw`'s, drawn on the batch's device)."""
    k = int(round(ratio * noise.shape[1]))
    ranks = noise.argsort(dim=1).argsort(dim=1)
    return ranks < k


class SimMIM(nn.Module):
    def __init__(self, model: dict, mask_ratio: float):
        super().__init__()
        self.backbone = build_backbone(model)
        if not self.backbone.accepts_mask:
            raise UserError(f"grid.backbones: simmim masks patches, which {model['backbone']} cannot; "
                            f"pair it with a ViT ({', '.join(VIT_PRESETS)})")
        self.patch_size, self.mask_ratio = self.backbone.reduction, mask_ratio
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.backbone.num_features))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = PixelHead(self.backbone.num_features, self.patch_size, 3)

    def draw(self, batch: dict, gen: torch.Generator | None = None) -> dict:
        """The batch with the step's random input added ("mask_noise"), unless it has it or a
        "mask". The loop (sslseg.train.train_step) calls this before a compiled forward, which a
        draw taking a generator would break into several graphs; the forward calls it too, so
        the draws are the same, in the same order, whoever makes them."""
        if "mask" in batch or "mask_noise" in batch:
            return batch
        images = batch["images"]
        n = (images.shape[-2] // self.patch_size) * (images.shape[-1] // self.patch_size)
        return {**batch, "mask_noise": torch.rand(images.shape[0], n, generator=gen, device=images.device)}

    def forward(self, batch: dict, gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """batch["images"]: normalised (B, 3, H, W); optional batch["mask"] (B, N) bool, or
        batch["mask_noise"] (B, N) from `draw`. Returns L1 over masked patches, and
        {"pred": (B, 3, H, W), "mask": (B, N) bool}."""
        batch = self.draw(batch, gen)
        images = batch["images"]
        mask = batch.get("mask")
        if mask is None:
            mask = random_mask(batch["mask_noise"], self.mask_ratio)
        pred = self.head(self.backbone.forward_maps(images, mask, self.mask_token))
        err = F.l1_loss(patchify(pred, self.patch_size), patchify(images, self.patch_size), reduction="none")
        m = mask.unsqueeze(-1).to(err.dtype)
        loss = (err * m).sum() / (m.sum() * err.shape[-1]).clamp(min=1)
        return loss, {"pred": pred, "mask": mask}
