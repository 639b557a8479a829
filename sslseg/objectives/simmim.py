"""SimMIM: mask patches with a learnable token, predict their pixels, L1 on masked patches."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslseg.models import build_backbone, encode
from sslseg.models.heads import PixelHead
from sslseg.models.vit import patchify


def random_mask(b: int, n: int, ratio: float, device: torch.device, gen: torch.Generator | None = None) -> torch.Tensor:
    """(B, N) bool, exactly round(ratio * N) patches masked in every sample."""
    k = int(round(ratio * n))
    noise = torch.rand(b, n, generator=gen).to(device)
    ranks = noise.argsort(dim=1).argsort(dim=1)
    return ranks < k


class SimMIM(nn.Module):
    def __init__(self, model: dict, mask_ratio: float = 0.5):
        super().__init__()
        self.backbone = build_backbone(model["preset"], model["image_size"], model["patch_size"])
        self.patch_size, self.mask_ratio = model["patch_size"], mask_ratio
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.backbone.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = PixelHead(self.backbone.embed_dim, self.patch_size, 3)

    def forward(self, batch: dict, gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """batch["images"]: normalised (B, 3, H, W). Returns L1 over masked patches,
        and {"pred": (B, 3, H, W), "mask": (B, N) bool}."""
        images = batch["images"]
        n = (images.shape[-1] // self.patch_size) ** 2
        mask = batch.get("mask")
        if mask is None:
            mask = random_mask(images.shape[0], n, self.mask_ratio, images.device, gen)
        tokens = encode(self.backbone, images, mask, self.mask_token)
        pred = self.head(tokens[:, self.backbone.num_prefix_tokens:])
        err = F.l1_loss(patchify(pred, self.patch_size), patchify(images, self.patch_size), reduction="none")
        m = mask.unsqueeze(-1).to(err.dtype)
        loss = (err * m).sum() / (m.sum() * err.shape[-1]).clamp(min=1)
        return loss, {"pred": pred, "mask": mask}
