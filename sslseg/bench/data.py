"""The bench's own data, and the loop a user would otherwise write to read it (measurement b).

Photo-like JPEGs with Oxford-style trimaps, written to a temporary folder, so the bench
needs no dataset; and an endless torchvision DataLoader over them: PIL decode plus
per-image transforms in worker processes, the usual way to feed such a model. How careful
that user is depends on the device (`baseline_settings`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from sslseg.data.sources import Record

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ImageNet's, as torchvision users normalise


# --- synthetic data ---------------------------------------------------------------------------

def _natural(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """A photo-like image (octaves of smooth noise, spectrum falling with frequency, so JPEG
    sizes and decode cost resemble real photos) with an elliptic 'pet' and its Oxford trimap."""
    img = np.zeros((h, w, 3), np.float32)
    for cells, weight in ((4, 0.4), (30, 0.25), (120, 0.2), (500, 0.15)):
        small = rng.integers(0, 256, (max(2, cells * h // w), cells, 3), dtype=np.uint8)
        img += weight * np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ry, rx = rng.uniform(0.15, 0.4) * h, rng.uniform(0.15, 0.4) * w
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    inside = r <= 1
    img[inside] = 0.6 * img[inside] + 0.4 * rng.uniform(0, 255, 3)
    img += rng.normal(0, 12, img.shape)  # with the finest octave: ~95 KB per 500x375 JPEG, as ImageNet's ~110 KB
    trimap = np.where(inside, 1, 2).astype(np.uint8)
    trimap[np.abs(r - 1) * min(rx, ry) < 2] = 3  # a 4-px border band, as in the real trimaps
    return np.clip(img, 0, 255).astype(np.uint8), trimap


def write_images(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Record]:
    """n JPEGs in an ImageFolder layout (2 classes), a quarter portrait, with PNG trimaps (values 1-3)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        w, h = size if i % 4 else size[::-1]
        image, trimap = _natural(rng, w, h)
        path = root / "jpeg" / f"c{i % 2}" / f"{i:05d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, quality=90)
        tri = root / "trimaps" / f"{i:05d}.png"
        tri.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(trimap).save(tri)
        records.append(Record(f"{i:05d}", path, tri, i % 2))
    return records


# --- the user's loop (b) ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Baseline:
    """How the user's loop (b) runs on one device type."""
    amp: str  # train_step's autocast setting: "none" (fp32) or "bf16"
    fused: bool  # AdamW(fused=True)
    compile: bool  # torch.compile the model, as sslseg's step (a) does
    workers: int  # DataLoader worker processes
    pre_resize: bool  # JPEGs resized once, before timing, to the side sslseg packs them at


def cpu_count() -> int:
    """Cores this process may run on (a SLURM or taskset mask), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def baseline_settings(device: torch.device, compiled: bool) -> Baseline:
    """The loop b stands for. On CUDA, a careful user's: bf16 autocast, fused AdamW, the same
    compile choice as a, a worker per core and JPEGs resized once beforehand, so a/b there
    measures sslseg's data path and step, not missing switches. On CPU, the plain loop
    BENCHMARKS.md has recorded since the first run (eager fp32, plain AdamW, 2 workers,
    full-size JPEGs), so its a/b stays comparable with the figures there: bf16 is slower on
    that CPU, compiling did not pay (train.use_compile) and more workers than the 2 cores
    would only take them from the model."""
    if device.type == "cuda":
        return Baseline(amp="bf16", fused=True, compile=compiled, workers=cpu_count(), pre_resize=True)
    return Baseline(amp="none", fused=False, compile=False, workers=2, pre_resize=False)


def pre_resize(records: list[Record], out: Path, side: int) -> list[Record]:
    """Copies of the JPEGs (and trimaps, nearest-neighbour) with their shorter side resized to
    `side`, in the same ImageFolder layout under `out`: done once, as a user would before
    training on a small input size."""
    resized = []
    for r in records:
        image = Image.open(r.image).convert("RGB")
        scale = side / min(image.size)
        size = (max(side, round(image.width * scale)), max(side, round(image.height * scale)))
        path = out / "jpeg" / r.image.parent.name / r.image.name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.resize(size, Image.BILINEAR).save(path, quality=90)
        trimap = None
        if r.trimap is not None:
            trimap = out / "trimaps" / r.trimap.name
            trimap.parent.mkdir(parents=True, exist_ok=True)
            Image.open(r.trimap).resize(size, Image.NEAREST).save(trimap)
        resized.append(Record(r.name, path, trimap, r.label))
    return resized

class _Pairs(torch.utils.data.Dataset):
    """JPEG + trimap PNG pairs through torchvision v2 transforms, which move the mask with the image."""

    def __init__(self, records: list[Record], transform: Callable):
        self.records, self.transform = records, transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        from torchvision import tv_tensors

        r = self.records[i]
        image = Image.open(r.image).convert("RGB")
        mask = tv_tensors.Mask(torch.from_numpy(np.asarray(Image.open(r.trimap), np.int64) - 1))
        return self.transform(image, mask)


def user_transform(aug: dict, size: int) -> Callable:
    """The stage's `augment` settings as the usual per-image torchvision v2 pipeline."""
    from torchvision.transforms import v2

    crop = (v2.Resize((size, size)) if tuple(aug["scale"]) == (1.0, 1.0) else
            v2.RandomResizedCrop(size, scale=tuple(aug["scale"]), ratio=tuple(aug["ratio"])))
    j = aug["jitter"]
    return v2.Compose([crop, v2.RandomHorizontalFlip(aug["flip"]), v2.ColorJitter(j, j, j),
                       v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


def user_loader(task: str, records: list[Record], root: Path, settings: dict, device: torch.device,
                workers: int = 2) -> Iterator[dict]:
    """An endless DataLoader (sampling with replacement, so no epoch-boundary stalls count
    against it) of batches on `device` from the JPEGs under `root`/jpeg (`records`: the same
    files, with trimaps): images only for pretraining, with masks for `finetune`."""
    from torchvision import datasets

    t = user_transform(settings["augment"], settings["model"]["image_size"])
    ds = datasets.ImageFolder(str(root / "jpeg"), transform=t) if task != "finetune" else _Pairs(records, t)
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=10**9)
    loader = torch.utils.data.DataLoader(ds, settings["batch_size"], sampler=sampler, num_workers=workers,
                                         drop_last=True, pin_memory=device.type == "cuda")
    for x, y in loader:
        batch = {"images": x.to(device, non_blocking=True)}
        if task == "finetune":
            batch["masks"] = y.to(device, non_blocking=True).long()
        yield batch
