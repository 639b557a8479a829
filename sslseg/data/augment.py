"""Batched augmentation on the device, with per-sample random parameters.

Images arrive as uint8 (B, H, W, 3) on the device; one affine_grid +
grid_sample does random-resized-crop, flip and resize for the whole batch, and
the same grid (nearest) moves the trimaps, so labels stay aligned.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@functools.lru_cache(maxsize=None)
def imagenet_stats(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std as (1, 3, 1, 1) tensors, built once per (device, dtype): a step
    then copies no constants from the host. Never inference tensors, whatever mode the first
    call runs in, so a cached pair also serves autograd."""
    with torch.inference_mode(False):
        mean = torch.tensor(IMAGENET_MEAN, device=device, dtype=dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device, dtype=dtype).view(1, 3, 1, 1)
    return mean, std


def normalize(x: torch.Tensor) -> torch.Tensor:
    mean, std = imagenet_stats(x.device, x.dtype)
    return (x - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    mean, std = imagenet_stats(x.device, x.dtype)
    return (x * std + mean).clamp(0, 1)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) → float (B, 3, H, W) in [0, 1]."""
    return images.permute(0, 3, 1, 2).float().div_(255)


TRIES = 10  # torchvision's RandomResizedCrop.get_params draws up to 10 crops before its fallback


def crop_params(b: int, scale: Sequence[float], ratio: Sequence[float], flip: float,
                gen: torch.Generator | None, aspect: torch.Tensor | None = None,
                device: torch.device | None = None) -> torch.Tensor:
    """Per-sample affine matrices (B, 2, 3) in normalised coordinates.

    As torchvision's RandomResizedCrop on the original image: area fraction ~ U(scale) and
    log aspect ~ U(log ratio), redrawn up to 10 times until the crop fits; else the
    fallback, a centre crop of the whole image with its aspect ratio clamped into `ratio`.
    `aspect` (B,): each original's width / height when it was squashed into a square pack
    (None: the packed image is the original). The position is uniform where the crop fits.
    Drawn and built on `device` (default: aspect's, else gen's, else the CPU), which must be
    gen's: no host draw, no copy.
    """
    if device is None:
        device = aspect.device if aspect is not None else gen.device if gen is not None else torch.device("cpu")
    u = torch.rand(b, TRIES, 2, generator=gen, device=device)
    v = torch.rand(b, 3, generator=gen, device=device)
    a = torch.ones(b, device=device) if aspect is None else aspect.to(device, torch.float32)
    area = scale[0] + (scale[1] - scale[0]) * u[..., 0]
    r = (math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[..., 1]).exp()
    # a crop of w_px = sqrt(area·W·H·r) of an original W×H is a fraction sqrt(area·r·H/W) of its width
    w, h = (area * r / a[:, None]).sqrt(), (area * a[:, None] / r).sqrt()
    fits = (w <= 1) & (h <= 1)
    first = fits.float().argmax(1, keepdim=True)  # the first draw that fits (0 when none does)
    w, h, ok = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], fits.any(1)
    # fallback: the whole image, narrowed to the nearest allowed aspect ratio, centred
    fw = torch.where(a > ratio[1], ratio[1] / a, torch.ones_like(a))
    fh = torch.where(a < ratio[0], a / ratio[0], torch.ones_like(a))
    w, h = torch.where(ok, w, fw), torch.where(ok, h, fh)
    cx = torch.where(ok, (1 - w) * (2 * v[:, 0] - 1), torch.zeros_like(w))
    cy = torch.where(ok, (1 - h) * (2 * v[:, 1] - 1), torch.zeros_like(h))
    sign = torch.where(v[:, 2] < flip, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = w * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    return theta


def colour_jitter(x: torch.Tensor, strength: float, gen: torch.Generator | None) -> torch.Tensor:
    """Brightness, contrast and saturation factors ~ U(1 - s, 1 + s), per sample, drawn on x's device."""
    if strength <= 0:
        return x
    f = (1 + strength * (2 * torch.rand(x.shape[0], 3, generator=gen, device=x.device) - 1)).to(x.dtype)
    x = x * f[:, 0].view(-1, 1, 1, 1)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = (x - gray.mean((2, 3), keepdim=True)) * f[:, 1].view(-1, 1, 1, 1) + gray.mean((2, 3), keepdim=True)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = (x - gray) * f[:, 2].view(-1, 1, 1, 1) + gray
    return x.clamp_(0, 1)


def augment(images: torch.Tensor, masks: torch.Tensor | None, size: int, gen: torch.Generator | None,
            scale: Sequence[float] = (1.0, 1.0), ratio: Sequence[float] = (1.0, 1.0),
            flip: float = 0.0, jitter: float = 0.0,
            aspect: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 images (B, H, W, 3) [+ masks (B, H, W)] → normalised (B, 3, S, S) [+ long (B, S, S)].
    `aspect`: the originals' width / height for squashed packs (see `crop_params`). `gen`: on the
    images' device (sslseg.train.make_generator), or None for the global RNG."""
    x = to_float(images)
    b = x.shape[0]
    no_crop = tuple(scale) == (1.0, 1.0) and tuple(ratio) == (1.0, 1.0)
    if no_crop:
        aspect = None  # the whole packed image, as it was packed: the original's shape is not restored
    identity = no_crop and flip <= 0 and x.shape[-1] == size
    if not identity:
        theta = crop_params(b, scale, ratio, flip, gen, aspect, x.device)
        grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if masks is not None:
            m = F.grid_sample(masks.unsqueeze(1).float(), grid, mode="nearest", padding_mode="border", align_corners=False)
            masks = m.squeeze(1)
    x = colour_jitter(x, jitter, gen)
    return normalize(x), None if masks is None else masks.long()


def make_transform(aug: dict, size: int, label_key: str | None) -> Callable[[dict, torch.Generator | None], dict]:
    """The stage's batched on-device augmentation: uint8 batch → normalised images (+ moved masks).
    Its random draws come from `gen` on the batch's device."""
    def apply(raw: dict, gen: torch.Generator | None) -> dict:
        masks = raw["masks"] if label_key == "masks" else None
        images, masks = augment(raw["images"], masks, size, gen, aug["scale"], aug["ratio"], aug["flip"], aug["jitter"],
                                raw.get("aspect"))
        batch = {"images": images}
        if label_key == "masks":
            batch["masks"] = masks
        elif label_key:
            batch[label_key] = raw[label_key]
        return batch
    return apply
