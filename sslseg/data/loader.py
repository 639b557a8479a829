"""Batches from a pack: contiguous reads, uint8 transfer, augmentation on the device.

The rows a stage trains on are read once into memory (a few hundred MB even
for tens of thousands of 128-px images). When they exceed `memory_gb`, the pack
is streamed instead, one contiguous HDF5 slice per block (so a stream holds one
block, up to MIN_BLOCK_ROWS rows, in memory). Either way an epoch
visits the rows in the order `Batches.order` gives, a function of (rows,
batch_size, seed) only, so `memory_gb` never changes a result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np
import torch

from sslseg.data.pack import read_pack
from sslseg.io import UserError

BLOCK_BATCHES = 32  # a block is batch_size * 32 contiguous rows, and at least MIN_BLOCK_ROWS
# Sets up to this many rows (Intel's 14k scenes, the 7k pets, pretraining subsets up to 65k)
# are one block, i.e. shuffled whole, whatever the order their pack was written in (Intel's
# is by class). Only larger pretraining subsets, written in a random order, visit blocks.
MIN_BLOCK_ROWS = 65_536
BLOCK_SEED_OFFSET = 1_000_003  # the block order's generator, apart from the within-block one


def block_order(n: int, block: int, seed: int | None) -> list[tuple[int, torch.Tensor]]:
    """(first row, permutation of the block's rows) per block of `block` contiguous rows, in
    visiting order; row order when `seed` is None.

    The block order comes from a generator seeded `seed + 1_000_003`, the permutations from
    one seeded `seed`, drawn block after block; a single block is thus exactly
    randperm(n, seed), the order of a non-contiguous set. Rows mix within a block and blocks
    in order, never rows across blocks: fine for pretraining packs, whose rows are written
    in a seeded random subset order, so each block is already a random sample of the pack.
    (A pack written in class order, like Intel's, stays below MIN_BLOCK_ROWS: one block.)"""
    starts = list(range(0, n, block))
    if seed is None:
        return [(s, torch.arange(min(block, n - s))) for s in starts]
    rows_gen = torch.Generator().manual_seed(seed)
    visit = torch.randperm(len(starts), generator=torch.Generator().manual_seed(seed + BLOCK_SEED_OFFSET))
    out = []
    for b in visit.tolist():
        s = starts[b]
        out.append((s, torch.randperm(min(block, n - s), generator=rows_gen)))
    return out


class Batches:
    """Iterates uint8 batches on `device`; `epoch(seed)` fixes the order."""

    def __init__(self, pack: str | Path, rows: np.ndarray | None, batch_size: int, device: torch.device,
                 keys: Sequence[str] = ("images", "masks"), memory_gb: float = 8.0, drop_last: bool = True,
                 masks: str | Path | None = None):
        """`masks`: a pack whose "masks" (same rows as `pack`) replace `pack`'s, e.g. generated
        imperfect labels; such a set is always held in memory (a fine-tune subset)."""
        self.pack, self.batch_size, self.device, self.drop_last = Path(pack), batch_size, device, drop_last
        with h5py.File(self.pack, "r") as f:
            self.keys = [k for k in keys if k in f]
            n_all = f["images"].shape[0]
            row_bytes = sum(int(np.prod(f[k].shape[1:])) * f[k].dtype.itemsize for k in self.keys)
        self.rows = np.arange(n_all) if rows is None else np.sort(np.asarray(rows))
        self.n = len(self.rows)
        self.contiguous = self.n == 0 or (self.rows[-1] - self.rows[0] + 1 == self.n)
        self.streamed = self.contiguous and self.n * row_bytes > memory_gb * 2**30 and masks is None
        self.arrays: dict[str, torch.Tensor] = {}
        if not self.streamed and self.n:
            sel = slice(int(self.rows[0]), int(self.rows[-1]) + 1) if self.contiguous else self.rows
            self.arrays = {k: torch.from_numpy(v) for k, v in read_pack(self.pack, sel, self.keys).items()}
            if masks is not None and "masks" in self.arrays:
                with h5py.File(masks, "r") as f:
                    shape = f["masks"].shape if "masks" in f else None
                if shape != (n_all, *self.arrays["masks"].shape[1:]):
                    raise UserError(f"{masks}: labels of shape {shape} do not match the {n_all} pets of {pack} at "
                                    f"{self.arrays['masks'].shape[-1]} px; delete it and rerun the weak_labels stage")
                self.arrays["masks"] = torch.from_numpy(read_pack(masks, sel, ("masks",))["masks"])
            if device.type == "cuda":
                # The uint8 rows fit the budget: keep them on the GPU and gather batches there,
                # so no per-step host gather or host-to-device copy is left in the loop.
                self.arrays = {k: v.to(device) for k, v in self.arrays.items()}

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def blocks(self, seed: int | None) -> list[tuple[int, torch.Tensor]]:
        """The epoch's order as blocks (see `block_order`): one block, all rows, for a
        non-contiguous set (a fine-tune subset, never streamed): randperm(n, seed) as always."""
        if not self.contiguous:
            perm = torch.arange(self.n) if seed is None else \
                torch.randperm(self.n, generator=torch.Generator().manual_seed(seed))
            return [(0, perm)]
        return block_order(self.n, max(self.batch_size * BLOCK_BATCHES, MIN_BLOCK_ROWS), seed)

    def order(self, seed: int | None) -> torch.Tensor:
        """Positions in `rows` in the order the epoch visits them."""
        blocks = self.blocks(seed)
        return torch.cat([s + perm for s, perm in blocks]) if blocks else torch.zeros(0, dtype=torch.long)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def epoch(self, seed: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """One pass; shuffled with `seed`, in row order when `seed` is None."""
        if self.streamed:
            yield from self._stream(seed)
            return
        order = self.order(seed)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size].to(self.device)
            yield self._to_device({k: v[idx] for k, v in self.arrays.items()})

    def _stream(self, seed: int | None) -> Iterator[dict[str, torch.Tensor]]:
        """The same batches as `epoch` in memory: each block is one HDF5 slice, permuted,
        and batches are cut across block boundaries (rows left over carry into the next)."""
        carry: dict[str, torch.Tensor] = {}
        with h5py.File(self.pack, "r") as f:
            for s, perm in self.blocks(seed):
                lo = int(self.rows[0]) + s
                data = {k: torch.from_numpy(f[k][lo:lo + len(perm)])[perm] for k in self.keys}
                data = {k: torch.cat([carry[k], v]) if carry else v for k, v in data.items()}
                m = len(data[self.keys[0]]) // self.batch_size * self.batch_size
                for i in range(0, m, self.batch_size):
                    yield self._to_device({k: v[i:i + self.batch_size] for k, v in data.items()})
                carry = {k: v[m:] for k, v in data.items()}
        if carry and len(carry[self.keys[0]]) and not self.drop_last:
            yield self._to_device(carry)
