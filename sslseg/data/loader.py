"""Batches from a pack: contiguous reads, uint8 transfer, augmentation on the device.

The rows a stage trains on are read once into memory (a few hundred MB even
for tens of thousands of 128-px images): on CUDA straight onto the GPU, chunk by
chunk (`load_rows`), when they fit `gpu_memory_gb`; elsewhere into host memory when
they fit `memory_gb`. Larger contiguous sets are streamed instead, one contiguous HDF5
slice per block, the next block read by a background thread while the current one is
consumed (`prefetch`; so a stream holds two blocks of up to MIN_BLOCK_ROWS rows as
read: the one batches are gathered from, and the next). Either way an epoch
visits the rows in the order `Batches.order` gives, a function of (rows,
batch_size, seed) only, so neither budget ever changes a result.
"""

from __future__ import annotations

import queue
import threading
from contextlib import closing
from pathlib import Path
from typing import Iterable, Iterator, Sequence, TypeVar

import h5py
import numpy as np
import torch

from sslseg.data.pack import open_pack
from sslseg.io import UserError

BLOCK_BATCHES = 32  # a block is batch_size * 32 contiguous rows, and at least MIN_BLOCK_ROWS
# Sets up to this many rows (Intel's 14k scenes, the 7k pets, pretraining subsets up to 65k)
# are one block, i.e. shuffled whole, whatever the order their pack was written in (Intel's
# is by class). Only larger pretraining subsets, written in a random order, visit blocks.
MIN_BLOCK_ROWS = 65_536
# runtime.gpu_memory_gb null: this much of the device's memory may hold a stage's rows; the
# rest is the model's, its activations' and, with gpu_share, the other jobs' on the device
GPU_MEMORY_FRACTION = 0.25
BLOCK_SEED_OFFSET = 1_000_003  # the block order's generator, apart from the within-block one
CHUNK_BYTES = 256 * 2**20  # rows per HDF5 read when loading a set: the host holds one chunk, never the set
T = TypeVar("T")


def load_rows(pack: str | Path, rows: slice | np.ndarray, keys: Sequence[str], device: torch.device,
              chunk_rows: int | None = None) -> dict[str, torch.Tensor]:
    """`keys` of `rows` (a slice, or sorted indices) of `pack`, each in one tensor allocated on
    `device` and filled `chunk_rows` rows at a time (default: CHUNK_BYTES of rows), so a set
    bound for the GPU never exists whole in host memory. Equal to reading it in one go."""
    with open_pack(pack) as f:
        keys = [k for k in keys if k in f]
        n_all = f[keys[0]].shape[0] if keys else 0
        index = np.arange(n_all)[rows] if isinstance(rows, slice) else np.asarray(rows)
        row_bytes = sum(int(np.prod(f[k].shape[1:])) * f[k].dtype.itemsize for k in keys) or 1
        step = chunk_rows or max(1, CHUNK_BYTES // row_bytes)
        out = {}
        for k in keys:
            dtype = torch.from_numpy(np.empty(0, f[k].dtype)).dtype
            out[k] = torch.empty((len(index), *f[k].shape[1:]), dtype=dtype, device=device)
            for a in range(0, len(index), step):
                part = index[a:a + step]
                contiguous = part[-1] - part[0] + 1 == len(part)  # one hyperslab, not a point list
                sel = slice(int(part[0]), int(part[-1]) + 1) if contiguous else part
                out[k][a:a + len(part)].copy_(torch.from_numpy(f[k][sel]))
        return out


_END = object()


def prefetch(source: Iterable[T], depth: int = 1) -> Iterator[T]:
    """`source`'s items, produced by a background thread up to `depth` items ahead of the
    consumer (for a stream: the next HDF5 block is read while batches are gathered from the
    current one: h5py releases the GIL in H5Dread, h5py/h5py#1453).

    The thread starts at the first item and closes `source` itself (an HDF5 file is closed by
    the thread that opened it). Closing this generator early (`closing()`, a budget that ends
    mid-epoch) stops the thread after the item it is producing and joins it; an exception in
    the thread is raised here."""
    items = iter(source)
    ready: queue.Queue = queue.Queue()
    room = threading.Semaphore(depth)  # items read ahead and not yet taken; bounds the memory held
    stop = threading.Event()

    def produce() -> None:
        try:
            while True:
                room.acquire()
                if stop.is_set():
                    return
                try:
                    item = next(items)
                except StopIteration:
                    ready.put((_END, None))
                    return
                ready.put((item, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer and raised there
            ready.put((_END, e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="sslseg-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _END:
                return
            room.release()
            yield item
    finally:
        stop.set()
        room.release()  # wakes a producer waiting for room, which then sees `stop`
        thread.join()


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
                 masks: str | Path | None = None, gpu_memory_gb: float | None = None):
        """`masks`: a pack whose "masks" (same rows as `pack`) replace `pack`'s, e.g. generated
        imperfect labels; such a set is always held in memory (a fine-tune subset).
        `memory_gb` (host) and `gpu_memory_gb` (CUDA; None: GPU_MEMORY_FRACTION of the device's
        memory) decide where the rows are held, never what a batch holds."""
        self.pack, self.batch_size, self.device, self.drop_last = Path(pack), batch_size, device, drop_last
        with h5py.File(self.pack, "r") as f:
            self.keys = [k for k in keys if k in f]
            n_all = f["images"].shape[0]
            row_bytes = sum(int(np.prod(f[k].shape[1:])) * f[k].dtype.itemsize for k in self.keys)
        self.rows = np.arange(n_all) if rows is None else np.sort(np.asarray(rows))
        self.n = len(self.rows)
        self.contiguous = self.n == 0 or (self.rows[-1] - self.rows[0] + 1 == self.n)
        size = self.n * row_bytes
        if gpu_memory_gb is None and device.type == "cuda":  # runtime.gpu_memory_gb: null
            gpu_memory_gb = GPU_MEMORY_FRACTION * torch.cuda.get_device_properties(device).total_memory / 2**30
        gpu_gb = memory_gb if gpu_memory_gb is None else gpu_memory_gb
        # On CUDA the rows that fit gpu_memory_gb stay on the GPU as uint8 and batches are gathered
        # there, so no per-step host gather or host-to-device copy is left in the loop.
        on_gpu = device.type == "cuda" and size <= gpu_gb * 2**30
        budget = gpu_gb if device.type == "cuda" else memory_gb
        self.streamed = self.contiguous and size > budget * 2**30 and masks is None
        self.arrays: dict[str, torch.Tensor] = {}
        if not self.streamed and self.n:
            sel = slice(int(self.rows[0]), int(self.rows[-1]) + 1) if self.contiguous else self.rows
            held = device if on_gpu else torch.device("cpu")  # (a subset too large for the GPU: host)
            self.arrays = load_rows(self.pack, sel, self.keys, held)
            if masks is not None and "masks" in self.arrays:
                with h5py.File(masks, "r") as f:
                    shape = f["masks"].shape if "masks" in f else None
                if shape != (n_all, *self.arrays["masks"].shape[1:]):
                    raise UserError(f"{masks}: labels of shape {shape} do not match the {n_all} pets of {pack} at "
                                    f"{self.arrays['masks'].shape[-1]} px; delete it and rerun the weak_labels stage")
                self.arrays["masks"] = load_rows(masks, sel, ("masks",), held)["masks"]

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

    def _staging(self, rows: int, like: torch.Tensor) -> torch.Tensor | None:
        """Where a batch of `rows` rows like `like` (host rows) is built for this job: for a CUDA
        job, pinned memory, since a copy from pageable memory waits for the GPU's queued work
        before it starts, so the host could never run a step ahead; from pinned memory it does
        not, and PyTorch's pinned-memory cache keeps the block until its copy is done. None
        (a new pageable tensor) otherwise. (A batch is MBs; the 4 GB blocks themselves stay
        pageable, `_read_blocks`.)"""
        if self.device.type == "cuda" and like.device.type == "cpu":
            return torch.empty((rows, *like.shape[1:]), dtype=like.dtype, pin_memory=True)
        return None

    def _gather(self, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Rows `idx` of `v`, as a new tensor (`_staging`'s)."""
        out = self._staging(len(idx), v)
        return v[idx] if out is None else torch.index_select(v, 0, idx, out=out)

    def _join(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """`a` then `b` (a batch straddling two streamed blocks), as a new tensor (`_staging`'s)."""
        out = self._staging(len(a) + len(b), a)
        return torch.cat([a, b]) if out is None else torch.cat([a, b], out=out)

    def epoch(self, seed: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """One pass; shuffled with `seed`, in row order when `seed` is None."""
        if self.streamed:
            yield from self._stream(seed)
            return
        # the whole order goes where the rows are (the device on CUDA) once per epoch, so no
        # step copies indices from the host; each step slices it there
        rows_at = next(iter(self.arrays.values())).device if self.arrays else self.device
        order = self.order(seed).to(rows_at)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self._to_device({k: self._gather(v, idx) for k, v in self.arrays.items()})

    def _read_blocks(self, seed: int | None) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """Each block of the epoch's order as one HDF5 slice, as read, with its permutation. Not
        permuted here: a permuted copy would be a third block in memory (this one, the one
        training, and the next as read); `_stream` gathers each batch from it instead. Pageable,
        not pinned: a block of 65,536 144-px rows is 4 GB, which the pinned allocator would round
        up to 8 GB of page-locked memory and keep cached; a stream holds ~2 blocks (~8 GB at
        144 px), within resources.pretrain.mem_mb."""
        with h5py.File(self.pack, "r") as f:
            for s, perm in self.blocks(seed):
                lo = int(self.rows[0]) + s
                yield {k: torch.from_numpy(f[k][lo:lo + len(perm)]) for k in self.keys}, perm

    def _stream(self, seed: int | None) -> Iterator[dict[str, torch.Tensor]]:
        """The same batches as `epoch` in memory: each gathered from a block of `_read_blocks`,
        the next block read ahead by `prefetch`; a batch straddling two blocks takes the rows
        left over, then the next block's first. Closing it (a budget that ends mid-epoch) stops
        the reader thread."""
        b = self.batch_size
        carry: dict[str, torch.Tensor] = {}
        with closing(prefetch(self._read_blocks(seed))) as blocks:
            for block, perm in blocks:  # (the previous block is freed here, once the next one has been read)
                def rows(lo: int, hi: int, block=block, perm=perm) -> dict[str, torch.Tensor]:
                    # a copy: a batch holds nothing of its block
                    return {k: self._gather(v, perm[lo:hi]) for k, v in block.items()}
                n, i = len(perm), 0
                if carry:
                    need = b - len(next(iter(carry.values())))
                    if n < need:  # the set's short tail block, visited anywhere, may hold fewer rows
                        carry = {k: self._join(carry[k], v) for k, v in rows(0, n).items()}
                        continue
                    yield self._to_device({k: self._join(carry[k], v) for k, v in rows(0, need).items()})
                    i = need
                while i + b <= n:
                    yield self._to_device(rows(i, i + b))
                    i += b
                carry = rows(i, n) if i < n else {}
        if carry and not self.drop_last:
            yield self._to_device(carry)
