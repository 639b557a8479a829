"""Data stages: pack the datasets into HDF5, draw the test split and the nested fine-tune subsets."""

from __future__ import annotations

import time

import numpy as np

from sslseg.data import sources
from sslseg.data.pack import pack, pack_length
from sslseg.data.splits import draw_test_split, finetune_subset, read_rows, write_rows
from sslseg.io import Output, write_sidecar


def pack_pets(root: str, out: Output, settings: dict, threads: int = 1) -> None:
    """Oxford-IIIT Pet (official layout) → HDF5 with images and trimap classes 0/1/2.

    settings: image_size, download, resize (crop | squash)."""
    t0 = time.time()
    records = sources.oxford_pets(root, settings["download"])
    pack(records, out, settings["image_size"], settings["resize"], threads, {"source": str(root)})
    write_sidecar(out, "pack_pets", settings, t0, images=len(records))


def pack_pretrain(root: str, out: Output, settings: dict, threads: int = 1) -> None:
    """The pretraining images → HDF5: a seeded nested subset of `size` images, rows in subset
    order, so the first n rows are the subset of size n.

    settings: source (folder | imagenette | demo), download, subset (random | stratified),
    subset_seed, size, pack_size, resize (whole | centre)."""
    t0 = time.time()
    if settings["source"] == "imagenette":
        root = str(sources.imagenette(root, settings["download"]))
    records = sources.image_folder(root, None, sources.HINTS["pretrain"])
    records = sources.subset_records(records, settings["size"], settings["subset_seed"], settings["subset"])
    classes = sorted({r.image.parent.name for r in records})
    pack(records, out, settings["pack_size"], settings["resize"], threads, {"source": str(root), "classes": classes})
    write_sidecar(out, "pack_pretrain", settings, t0, images=len(records))


def pack_intermediate(root: str, out: Output, settings: dict, threads: int = 1) -> None:
    """One split of the intermediate dataset (Intel: seg_train/<class>/ or seg_test/<class>/) → HDF5,
    labels in the fixed class order. settings: pack_size."""
    t0 = time.time()
    records = sources.image_folder(root, sources.INTEL_CLASSES, sources.HINTS["intermediate"])
    pack(records, out, settings["pack_size"], "crop", threads,
         {"source": str(root), "classes": list(sources.INTEL_CLASSES)})
    write_sidecar(out, "pack_intermediate", settings, t0, images=len(records))


def splits(pets: str, test: Output, pool: Output, settings: dict) -> None:
    """The test set (seeded, default 42) and the fine-tune pool, as row-index files.
    settings: test_size, test_seed."""
    pool_rows, test_rows = draw_test_split(pack_length(pets), settings["test_size"], settings["test_seed"])
    write_rows(test, np.sort(test_rows))
    write_rows(pool, pool_rows)


def subset(pool: str, out: Output, size: int, seed: int) -> None:
    """The nested fine-tune subset of `size` rows of the pool for `seed`."""
    write_rows(out, np.sort(finetune_subset(read_rows(pool), size, seed)))
