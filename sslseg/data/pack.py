"""Decode and resize once, into uint8 HDF5.

Layout of a pack: `images` (N, S, S, 3) uint8; `masks` (N, S, S) uint8 with
classes 0 pet, 1 background, 2 border (segmentation packs only); `labels` (N,)
int16 (classification packs); `names` (N,) strings; `aspect` (N,) float32, the original
width / height, in packs of whole (squashed) images. Chunked by rows so
training reads large contiguous blocks.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np
from PIL import Image

from sslseg.data.sources import Record, open_rgb, open_trimap
from sslseg.io import UserError, atomic_path

BLOCK = 256  # rows decoded per thread-pool round; bounds memory while packing


def _resize(image: Image.Image, size: int, mode: str, resample: int) -> Image.Image:
    if mode == "squash":  # whole image kept, aspect ratio changed (trimaps stay aligned)
        return image.resize((size, size), resample)
    # "crop": shorter side to `size`, then the centre square (keeps aspect ratio)
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), resample)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


MODES = {"squash": "squash", "whole": "squash", "crop": "crop", "centre": "crop"}  # config names → geometry


def load_record(rec: Record, size: int, mode: str) -> tuple[np.ndarray, np.ndarray | None, float]:
    """(image, trimap or None, width / height of the original image)."""
    image = open_rgb(rec.image)
    mask = None
    if rec.trimap is not None:
        trimap = Image.fromarray(open_trimap(rec.trimap, image.size))
        mask = np.asarray(_resize(trimap, size, MODES[mode], Image.NEAREST))
    w, h = image.size
    return np.asarray(_resize(image, size, MODES[mode], Image.BILINEAR)), mask, w / h


def load_arrays(records: Sequence[Record], size: int, mode: str, threads: int = 1) -> dict[str, np.ndarray]:
    """Decode `records` into in-memory arrays (used by pack and by folder evaluation). A squashed
    image keeps its original aspect ratio in "aspect", so a random-resized crop can draw its
    area and shape relative to the original, as torchvision's does on the full image."""
    out = {"images": np.empty((len(records), size, size, 3), np.uint8)}
    if records and records[0].trimap is not None:
        out["masks"] = np.empty((len(records), size, size), np.uint8)
    if MODES[mode] == "squash":
        out["aspect"] = np.empty(len(records), np.float32)
    with ThreadPoolExecutor(max(1, threads)) as pool:  # PIL releases the GIL while decoding
        for i, (img, mask, aspect) in enumerate(pool.map(lambda r: load_record(r, size, mode), records)):
            out["images"][i] = img
            if mask is not None:
                out["masks"][i] = mask
            if "aspect" in out:
                out["aspect"][i] = aspect
    return out


def pack(records: Sequence[Record], out: str | Path, size: int, mode: str = "squash", threads: int = 1,
         attrs: dict | None = None) -> Path:
    """Write `records` to the HDF5 file `out` atomically, decoding with `threads` threads."""
    if not records:
        raise UserError(f"{out}: nothing to pack (the source folder has no images)")
    n = len(records)
    seg = records[0].trimap is not None
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        chunk = max(1, min(n, 64))
        images = f.create_dataset("images", (n, size, size, 3), np.uint8, chunks=(chunk, size, size, 3))
        masks = f.create_dataset("masks", (n, size, size), np.uint8, chunks=(chunk, size, size)) if seg else None
        aspect = f.create_dataset("aspect", (n,), np.float32) if MODES[mode] == "squash" else None
        f.create_dataset("labels", data=np.asarray([r.label for r in records], np.int16))
        f.create_dataset("names", data=np.asarray([r.name for r in records], dtype=h5py.string_dtype()))
        for start in range(0, n, BLOCK):
            block = load_arrays(records[start:start + BLOCK], size, mode, threads)
            images[start:start + len(block["images"])] = block["images"]
            if masks is not None:
                masks[start:start + len(block["masks"])] = block["masks"]
            if aspect is not None:
                aspect[start:start + len(block["aspect"])] = block["aspect"]
        f.attrs.update({"size": size, "resize": mode, **(attrs or {})})
    return Path(out)


@contextlib.contextmanager
def open_pack(path: str | Path) -> Iterator[h5py.File]:
    """The pack open for reading; a missing or unreadable one (or a key it lacks) as one line
    naming the file and the fix."""
    try:
        with h5py.File(path, "r") as f:
            yield f
    except FileNotFoundError:
        raise UserError(f"{path}: pack not found; run the pack stage first") from None
    except (OSError, KeyError) as e:
        raise UserError(f"{path}: corrupt or truncated HDF5 ({e}); delete it and rerun the pack stage") from None


def read_pack(path: str | Path, rows: np.ndarray | slice | None = None, keys: Sequence[str] = ("images", "masks")) -> dict[str, np.ndarray]:
    """Read `keys` for `rows` (sorted indices or a slice) from a pack into memory."""
    with open_pack(path) as f:
        return {k: f[k][()] if rows is None else f[k][rows] for k in keys if k in f}


def pack_attrs(path: str | Path) -> dict:
    """The pack's attributes (size, resize, source, ...)."""
    with h5py.File(path, "r") as f:
        return dict(f.attrs)


def pack_length(path: str | Path) -> int:
    try:
        with h5py.File(path, "r") as f:
            return int(f["images"].shape[0])
    except (OSError, KeyError) as e:
        raise UserError(f"{path}: corrupt or truncated HDF5 ({e}); delete it and rerun the pack stage") from None
