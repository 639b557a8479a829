"""Deterministic test split and nested fine-tune subsets, recorded as index files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sslseg.io import UserError, atomic_path


def draw_test_split(n: int, test_size: int, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """(pool, test) row indices, as `torch.utils.data.random_split(ds, [n - test, test],
    generator=torch.Generator().manual_seed(seed))` would draw them, which is how the
    seeds drew their 1000 test images."""
    if test_size >= n:
        raise UserError(f"data.pets.test_size: {test_size} leaves no images to fine-tune on (the pack has {n}); lower it")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return perm[: n - test_size], perm[n - test_size:]


def finetune_subset(pool: np.ndarray, size: int, seed: int) -> np.ndarray:
    """The first `size` rows of the pool in an order fixed by `seed`: nested across sizes."""
    if size > len(pool):
        raise UserError(
            f"grid.finetune_sizes: {size} is larger than the fine-tune pool of {len(pool)} images "
            "(pack minus test set); lower it or use more data"
        )
    perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).numpy()
    return pool[perm[:size]]


def read_rows(path: str | Path) -> np.ndarray:
    """A row-index file (one integer per line) written by `write_rows`."""
    try:
        return np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable index file ({e}); delete it and rerun the splits stage") from None


def write_rows(path: str | Path, rows: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.savetxt(tmp, np.asarray(rows, dtype=np.int64), fmt="%d")
