"""Label-quality stage (study B): imperfect labels for the fine-tune pool, made once per seed.

Layout of a labels file: `masks` (N, S, S) uint8 over ALL rows of the pets pack (so a row
index means the same image in both files), classes 0/1/2 where labelled and 255 (IGNORE)
elsewhere, including every row outside the pool; `rows` (M,) int64, the sorted pool rows.
One gzip chunk per image: sparse labels are mostly 255 and shrink ~100×, rows never written
cost nothing. attrs: kind, seed, params (JSON).
"""

from __future__ import annotations

import json
import time

import h5py
import numpy as np

from sslseg.data.pack import pack_length, read_pack
from sslseg.data.splits import read_rows
from sslseg.data.weak_labels import IGNORE, generate_rows
from sslseg.data.weak_labels import quality as measure
from sslseg.io import Output, UserError, atomic_path, write_json, write_sidecar


def weak_labels(pets: str, pool: str, out: Output, quality: Output, settings: dict, seed: int,
                threads: int = 1) -> None:
    """Imperfect labels for the rows of `pool`, generated from the trimaps of `pets`, and how
    good they are (`quality`: labelled fraction, pixel accuracy and mIoU against the truth).

    settings: kind (scribbles | points | noisy) and that kind's `labels.<kind>` keys. Row r's
    labels depend only on (seed, r), so every budget's subset of the pool sees the same labels."""
    t0 = time.time()
    kind, params = settings["kind"], {k: v for k, v in settings.items() if k != "kind"}
    n, rows = pack_length(pets), np.unique(read_rows(pool))  # sorted, each once
    if not len(rows) or rows[0] < 0 or rows[-1] >= n:
        raise UserError(f"{pool}: rows must be among the {n} images of {pets}; delete it and rerun the splits stage")
    # One slice, indexed in memory: an HDF5 read of thousands of scattered rows is far slower.
    data = read_pack(pets, slice(int(rows[0]), int(rows[-1]) + 1), ("masks", "names"))
    if "masks" not in data:
        raise UserError(f"{pets}: has no trimaps (masks); is this the pets pack?")
    truth, names = data["masks"][rows - rows[0]], [s.decode() for s in data["names"][rows - rows[0]]]
    labels = generate_rows(truth, rows, kind, params, seed, names, threads)
    size = truth.shape[1:]
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        masks = f.create_dataset("masks", (n, *size), np.uint8, chunks=(1, *size), compression="gzip",
                                 fillvalue=IGNORE)
        for r, lab in zip(rows, labels):
            masks[r] = lab
        f.create_dataset("rows", data=rows)
        f.attrs.update({"kind": kind, "seed": seed, "params": json.dumps(params, sort_keys=True)})
    write_json(quality, {**measure(labels, truth), "kind": kind, "params": params, "seed": seed})
    write_sidecar(out, "labels", settings, t0, seed=seed)
