"""Readers for the datasets in their official on-disk layouts.

Every reader returns a list of `Record`s: a lazily decoded image (and trimap or
label). The pack stage decodes them once; nothing else touches JPEGs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from sslseg.io import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
PET_URL_HINT = "https://www.robots.ox.ac.uk/~vgg/data/pets/ (or set data.pets.download: true)"


@dataclass(frozen=True)
class Record:
    name: str
    image: Path
    trimap: Path | None = None
    label: int = -1


def open_rgb(path: Path) -> Image.Image:
    """Decode an image fully (so a truncated file fails here, naming the file)."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: corrupt or unreadable image ({e}); remove or replace the file") from None


def open_trimap(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Read an Oxford trimap (1 pet, 2 background, 3 border) as classes 0/1/2."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.size != size:
                raise UserError(
                    f"{path}: trimap is {im.size[0]}x{im.size[1]} but its image is {size[0]}x{size[1]}; "
                    "the pair does not match, re-extract the annotations"
                )
            arr = np.asarray(im.convert("L") if im.mode not in ("L", "P") else im, dtype=np.uint8)
    except (OSError, SyntaxError) as e:
        raise UserError(f"{path}: corrupt or unreadable trimap ({e}); remove or replace the file") from None
    bad = ~np.isin(arr, (1, 2, 3))
    if bad.any():
        raise UserError(
            f"{path}: trimap has values {sorted(set(np.unique(arr[bad]).tolist()))[:5]} outside 1-3 "
            "(1 pet, 2 background, 3 border); is this an Oxford-IIIT Pet trimap?"
        )
    return arr - 1


def oxford_pets(root: str | Path, download: bool = False) -> list[Record]:
    """All Oxford-IIIT Pet images with trimaps (trainval then test list), via torchvision.

    `root` is the folder holding `oxford-iiit-pet/` (torchvision's convention) or
    that folder itself. The official split is ignored downstream (see splits.py).
    """
    from torchvision.datasets import OxfordIIITPet

    root = Path(root)
    if root.name == "oxford-iiit-pet":
        root = root.parent
    if not download and not (root / "oxford-iiit-pet" / "annotations" / "trainval.txt").exists():
        raise UserError(
            f"{root / 'oxford-iiit-pet'}: no Oxford-IIIT Pet here (expected images/ and annotations/); "
            f"get it from {PET_URL_HINT} and set data.pets.root"
        )
    records: list[Record] = []
    for split in ("trainval", "test"):
        try:
            ds = OxfordIIITPet(str(root), split=split, target_types="segmentation", download=download)
        except RuntimeError as e:
            raise UserError(f"{root / 'oxford-iiit-pet'}: {e}; set data.pets.download: true or fetch it by hand") from None
        for image, seg in zip(ds._images, ds._segs):
            records.append(Record(Path(image).stem, Path(image), Path(seg)))
    missing = [r.image for r in records if not r.image.exists()] + [r.trimap for r in records if not r.trimap.exists()]
    if missing:
        raise UserError(f"{missing[0]}: listed in the annotations but missing ({len(missing)} files); re-extract the dataset")
    if not records:
        raise UserError(f"{root / 'oxford-iiit-pet'}: the list files name no images")
    return records


def image_folder(root: str | Path) -> list[Record]:
    """Every image below `root` (ImageNet's `<wnid>/*.JPEG` layout or any tree), sorted.

    The label is the index of the image's parent folder among all parent folders,
    which is the class for ImageNet and Intel layouts.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: image folder not found; set the config's data root to a folder of images")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise UserError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found below this folder")
    classes = sorted({p.parent.relative_to(root).as_posix() for p in paths})
    index = {c: i for i, c in enumerate(classes)}
    return [Record(p.relative_to(root).as_posix(), p, None, index[p.parent.relative_to(root).as_posix()]) for p in paths]


def subset_records(records: list[Record], size: int, seed: int, mode: str) -> list[Record]:
    """A nested subset: the first `size` of a seeded order, so smaller sizes lie inside larger ones.

    `random` draws uniformly; `stratified` deals the classes round-robin so every
    prefix is as class-balanced as the folder allows.
    """
    if size > len(records):
        raise UserError(f"pretrain size {size} is larger than the {len(records)} images available; lower grid.pretrain_sizes")
    rng = np.random.default_rng(seed)
    if mode == "random":
        order = rng.permutation(len(records))
    elif mode == "stratified":
        by_class: dict[int, list[int]] = {}
        for i, r in enumerate(records):
            by_class.setdefault(r.label, []).append(i)
        queues = [list(rng.permutation(v)) for _, v in sorted(by_class.items())]
        queues = [queues[i] for i in rng.permutation(len(queues))]
        order = []
        while any(queues):
            for q in queues:
                if q:
                    order.append(q.pop())
        order = np.asarray(order)
    else:
        raise UserError(f"data.pretrain.subset: unknown mode {mode!r}; use 'random' or 'stratified'")
    return [records[i] for i in order[:size]]


SOURCES: dict[str, Callable[..., list[Record]]] = {"oxford": oxford_pets, "folder": image_folder}
