"""Deterministic splits of the pets pack and nested fine-tune subsets, recorded as index files.

Two protocols (`data.pets.split`): `test_draw` (test_size images drawn with test_seed; the rest
is the fine-tune pool) and `train_val_test` (one permutation seeded with test_seed cut into the
pool, a validation set and a test set, by default 70/15/15 %: seed 003's protocol). Fine-tune
subsets are drawn from the pool only, as counts or as fractions of it ("5%"), and are nested: the
subset of a size is the first rows of the seed's permutation of the pool, whatever its unit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sslseg.io import UserError, atomic_path
from sslseg.sizes import resolve_size

SPLITS = ("test_draw", "train_val_test")


def draw_test_split(n: int, test_size: int, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """(pool, test) row indices, as `torch.utils.data.random_split(ds, [n - test, test],
    generator=torch.Generator().manual_seed(seed))` would draw them, which is how the
    seeds drew their 1000 test images."""
    if test_size >= n:
        raise UserError(f"data.pets.test_size: {test_size} leaves no images to fine-tune on (the pack has {n}); lower it")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return perm[: n - test_size], perm[n - test_size:]


def split_sizes(n: int, settings: dict) -> tuple[int, int, int]:
    """(pool, val, test) image counts of a pack of `n` images under `settings` (data.pets: split,
    test_size, val_fraction, test_fraction). train_val_test: val and test are round(fraction · n),
    the pool the rest (70/15/15 % by default); test_draw: no validation images."""
    split = settings.get("split", "test_draw")
    if split not in SPLITS:
        raise UserError(f"data.pets.split: {split!r} is not one of {', '.join(SPLITS)}")
    if split == "test_draw":
        test = settings["test_size"]
        if test >= n:
            raise UserError(f"data.pets.test_size: {test} leaves no images to fine-tune on (the pack has {n}); lower it")
        return n - test, 0, test
    vf, tf = settings["val_fraction"], settings["test_fraction"]
    if not (0 < vf < 1 and 0 < tf < 1) or vf + tf >= 1:
        raise UserError(f"data.pets.val_fraction: {vf} with data.pets.test_fraction {tf} leaves no training pool "
                        "(each must be in (0, 1) and their sum below 1); lower them")
    val, test = round(vf * n), round(tf * n)
    for key, k in (("val_fraction", val), ("test_fraction", test)):
        if k < 1:
            raise UserError(f"data.pets.{key}: {vf if key == 'val_fraction' else tf} of {n} images is no image; "
                            "raise it or pack more images")
    if n - val - test < 1:
        raise UserError(f"data.pets.val_fraction: {vf} with data.pets.test_fraction {tf} of {n} images leaves no "
                        "training pool; lower them")
    return n - val - test, val, test


def draw_splits(n: int, settings: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pool, val, test) row indices of a pack of `n` images (`split_sizes`): one permutation
    seeded with settings["test_seed"], cut in that order. Under test_draw this is exactly
    `draw_test_split` (val empty), so switching protocols keeps the old test set's recipe."""
    pool, val, _ = split_sizes(n, settings)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(settings["test_seed"])).numpy()
    return perm[:pool], perm[pool:pool + val], perm[pool + val:]


def finetune_subset(pool: np.ndarray, size: int | str, seed: int) -> np.ndarray:
    """The first `size` rows of the pool in an order fixed by `seed`: nested across sizes, counts
    and fractions alike (a fraction is resolved against the pool first, sslseg.sizes)."""
    count = resolve_size(size, len(pool))
    if count > len(pool):
        raise UserError(
            f"grid.finetune_sizes: {size} is larger than the fine-tune pool of {len(pool)} images "
            "(pack minus test and validation sets); lower it, use a fraction (\"10%\") or more data"
        )
    perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).numpy()
    return pool[perm[:count]]


def read_rows(path: str | Path) -> np.ndarray:
    """A row-index file (one integer per line) written by `write_rows`; an empty file (no
    validation set under test_draw) is no rows."""
    try:
        if Path(path).stat().st_size == 0:
            return np.empty(0, np.int64)
        return np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable index file ({e}); delete it and rerun the splits stage") from None


def write_rows(path: str | Path, rows: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.savetxt(tmp, np.asarray(rows, dtype=np.int64), fmt="%d")
