"""Batches from a pack: contiguous reads, uint8 transfer, augmentation on the device.

The rows a stage trains on are read once into memory (a few hundred MB even
for tens of thousands of 128-px images). When they exceed `memory_gb`, the pack
is streamed instead: blocks of contiguous rows in a seeded order, shuffled
within a window, so each read is one large HDF5 slice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np
import torch

from sslseg.data.pack import read_pack


class Batches:
    """Iterates uint8 batches on `device`; `epoch(seed)` fixes the order."""

    def __init__(self, pack: str | Path, rows: np.ndarray | None, batch_size: int, device: torch.device,
                 keys: Sequence[str] = ("images", "masks"), memory_gb: float = 8.0, drop_last: bool = True):
        self.pack, self.batch_size, self.device, self.drop_last = Path(pack), batch_size, device, drop_last
        with h5py.File(self.pack, "r") as f:
            self.keys = [k for k in keys if k in f]
            n_all = f["images"].shape[0]
            row_bytes = sum(int(np.prod(f[k].shape[1:])) * f[k].dtype.itemsize for k in self.keys)
        self.rows = np.arange(n_all) if rows is None else np.sort(np.asarray(rows))
        self.n = len(self.rows)
        contiguous = self.n == 0 or (self.rows[-1] - self.rows[0] + 1 == self.n)
        self.streamed = contiguous and self.n * row_bytes > memory_gb * 2**30
        self.arrays: dict[str, torch.Tensor] = {}
        if not self.streamed:
            sel = slice(int(self.rows[0]), int(self.rows[-1]) + 1) if contiguous else self.rows
            self.arrays = {k: torch.from_numpy(v) for k, v in read_pack(self.pack, sel, self.keys).items()}
            if device.type == "cuda":
                # The uint8 rows fit the budget: keep them on the GPU and gather batches there,
                # so no per-step host gather or host-to-device copy is left in the loop.
                self.arrays = {k: v.to(device) for k, v in self.arrays.items()}

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def epoch(self, seed: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """One pass; shuffled with `seed`, in row order when `seed` is None."""
        if self.streamed:
            yield from self._stream(seed)
            return
        order = torch.arange(self.n) if seed is None else torch.randperm(self.n, generator=torch.Generator().manual_seed(seed))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size].to(self.device)
            yield self._to_device({k: v[idx] for k, v in self.arrays.items()})

    def _stream(self, seed: int | None) -> Iterator[dict[str, torch.Tensor]]:
        block = self.batch_size * 32
        starts = np.arange(0, self.n, block)
        rng = np.random.default_rng(seed)
        if seed is not None:
            starts = rng.permutation(starts)
        carry: dict[str, torch.Tensor] = {}
        with h5py.File(self.pack, "r") as f:
            for s in starts:
                lo, hi = int(self.rows[0] + s), int(self.rows[0] + min(s + block, self.n))
                data = {k: torch.from_numpy(f[k][lo:hi]) for k in self.keys}
                if seed is not None:
                    perm = torch.from_numpy(rng.permutation(hi - lo))
                    data = {k: v[perm] for k, v in data.items()}
                data = {k: torch.cat([carry[k], v]) if carry else v for k, v in data.items()}
                m = len(data[self.keys[0]]) // self.batch_size * self.batch_size
                for i in range(0, m, self.batch_size):
                    yield self._to_device({k: v[i:i + self.batch_size] for k, v in data.items()})
                carry = {k: v[m:] for k, v in data.items()}
        if carry and len(carry[self.keys[0]]) and not self.drop_last:
            yield self._to_device(carry)
