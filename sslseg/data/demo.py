"""The generated demo dataset, written in the real datasets' official layouts.

It exists so the whole workflow runs offline; the same readers that load the
real Oxford-IIIT Pet, ImageNet and Intel folders load it. Pets are textured
blobs on textured backgrounds with a thin border band, like the real trimaps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sslseg.data.sources import INTEL_CLASSES
from sslseg.io import Output, atomic_path

BREEDS = ("Abyssinian", "Bengal", "american_bulldog", "beagle")


def _texture(rng: np.random.Generator, h: int, w: int, colour: np.ndarray, freq: float) -> np.ndarray:
    """Smooth colour field with stripes of a random orientation."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * freq + rng.uniform(0, 6.3))
    field = colour[None, None, :] + 40 * stripes[..., None] + rng.normal(0, 12, (h, w, 3))
    return np.clip(field, 0, 255)


def _pet(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = int(rng.integers(120, 200)), int(rng.integers(140, 220))
    image = _texture(rng, h, w, rng.uniform(40, 215, 3), rng.uniform(0.05, 0.3))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    inside = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(1, 3))):  # a body, sometimes a head
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        ry, rx = rng.uniform(0.15, 0.35) * h, rng.uniform(0.15, 0.35) * w
        inside |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    pet_colour = rng.uniform(40, 215, 3)
    image[inside] = _texture(rng, h, w, pet_colour, rng.uniform(0.4, 0.9))[inside]
    # Border band: pixels within 2 px of the boundary, as in the real trimaps.
    grown, shrunk = inside.copy(), inside.copy()
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, -1), (2, 0), (0, 2), (-2, 0), (0, -2)):
        shifted = np.roll(np.roll(inside, dy, 0), dx, 1)
        grown |= shifted
        shrunk &= shifted
    trimap = np.full((h, w), 2, np.uint8)
    trimap[inside] = 1
    trimap[grown & ~shrunk] = 3
    return image.astype(np.uint8), trimap


def _scene(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    # Each class has its own hue and stripe frequency so the task is learnable.
    base = np.array([[150, 120, 110], [40, 120, 40], [200, 220, 240], [110, 100, 90], [40, 90, 200], [90, 90, 90]])
    colour = base[label] + rng.normal(0, 15, 3)
    return _texture(rng, size, size, colour, 0.1 + 0.12 * label).astype(np.uint8)


def _save(image: np.ndarray, path: Path, **kwargs) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG" if path.suffix == ".png" else "JPEG", **kwargs)


def make_demo(root: str | Path, pets: int = 300, pretrain: int = 300, intel_per_class: int = 20, seed: int = 0) -> Path:
    """Write `root/oxford-iiit-pet`, `root/imagenet/<wnid>/` and `root/intel/seg_{train,test}/<class>/`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    pet_root = root / "oxford-iiit-pet"
    lines = []
    for i in range(pets):
        breed = BREEDS[i % len(BREEDS)]
        name = f"{breed}_{i // len(BREEDS) + 1}"
        image, trimap = _pet(rng)
        _save(image, pet_root / "images" / f"{name}.jpg", quality=90)
        _save(trimap, pet_root / "annotations" / "trimaps" / f"{name}.png")
        species = 1 if breed[0].isupper() else 2  # Oxford: capitalised breeds are cats
        lines.append(f"{name} {i % len(BREEDS) + 1} {species} {i % len(BREEDS) + 1}")
    cut = int(len(lines) * 0.5)
    for split, chunk in (("trainval", lines[:cut]), ("test", lines[cut:])):
        with atomic_path(pet_root / "annotations" / f"{split}.txt") as tmp:
            tmp.write_text("\n".join(chunk) + "\n")
    for i in range(pretrain):
        wnid = f"n{1000000 + i % 10:08d}"
        image, _ = _pet(rng)
        _save(image, root / "imagenet" / wnid / f"{wnid}_{i}.JPEG", quality=90)
    for split, n in (("seg_train", intel_per_class), ("seg_test", max(2, intel_per_class // 4))):
        for label, cls in enumerate(INTEL_CLASSES):
            for j in range(n):
                _save(_scene(rng, label, 150), root / "intel" / split / cls / f"{label * 1000 + j}.jpg", quality=90)
    return root


def demo_data(out: Output, pets: int, pretrain: int, intel_per_class: int, seed: int) -> None:
    """Write the generated demo dataset under `out` in the official layouts (sizes: data.demo)."""
    make_demo(out, pets, pretrain, intel_per_class, seed)
