"""Data stages: pack the datasets into HDF5, draw the test split and the nested fine-tune subsets."""

from __future__ import annotations

import time

import h5py
import numpy as np

from sslseg.data import domains, sources
from sslseg.data.pack import pack, pack_length
from sslseg.data.splits import draw_splits, finetune_subset, read_rows, write_rows
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

    settings: source (folder | imagenette | demo), download, subset (random | stratified |
    in_domain | out_domain | mixed), subset_seed, size, pack_size, resize (whole | centre),
    domain_classes (the in-domain class list for the domain subsets; "" or absent: the
    shipped ImageNet animal list). A domain pack also records the list and its images and
    classes per domain (attrs and sidecar)."""
    t0 = time.time()
    mode = settings["subset"]
    # read the list before the folder scan, so a bad path fails at once; only domain modes use it
    classes = domains.read_class_list(settings.get("domain_classes", "")) if mode in domains.MODES else None
    if settings["source"] == "imagenette":
        root = str(sources.imagenette(root, settings["download"]))
    pool = sources.image_folder(root, None, sources.HINTS["pretrain"])
    records = sources.subset_records(pool, settings["size"], settings["subset_seed"], mode, classes)
    attrs = {"source": str(root), "classes": sorted({r.image.parent.name for r in records})}
    extra = {}
    if classes is not None:
        extra = {"domains": domains.summary(records, pool, mode, classes)}
        # typed string arrays: an empty list (no out-of-domain class in an in_domain pack) would
        # otherwise be stored by h5py as an empty float array
        attrs |= {k: np.asarray(v, dtype=h5py.string_dtype()) if isinstance(v, list) else v
                  for k, v in extra["domains"].items()}
    pack(records, out, settings["pack_size"], settings["resize"], threads, attrs)
    write_sidecar(out, "pack_pretrain", settings, t0, images=len(records), **extra)


def pack_intermediate(root: str, out: Output, settings: dict, threads: int = 1) -> None:
    """One split of the intermediate dataset (Intel: seg_train/<class>/ or seg_test/<class>/) → HDF5,
    labels in the fixed class order. settings: pack_size."""
    t0 = time.time()
    records = sources.image_folder(root, sources.INTEL_CLASSES, sources.HINTS["intermediate"])
    pack(records, out, settings["pack_size"], "crop", threads,
         {"source": str(root), "classes": list(sources.INTEL_CLASSES)})
    write_sidecar(out, "pack_intermediate", settings, t0, images=len(records))


def splits(pets: str, test: Output, pool: Output, settings: dict, val: Output | None = None) -> None:
    """The test set, the validation set (`val`) and the fine-tune pool, as row-index files.
    settings (data.pets): test_seed, and split: test_draw (test_size images drawn; no validation
    set, `val` written empty) or train_val_test (val_fraction, test_fraction: 70/15/15 % by
    default). sslseg.data.splits.draw_splits."""
    pool_rows, val_rows, test_rows = draw_splits(pack_length(pets), settings)
    write_rows(test, np.sort(test_rows))
    if val:
        write_rows(val, np.sort(val_rows))
    write_rows(pool, pool_rows)
    print(f"pool {len(pool_rows)}, validation {len(val_rows)}, test {len(test_rows)} images", flush=True)


def subset(pool: str, out: Output, size: str, seed: int) -> None:
    """The nested fine-tune subset of the pool for `seed`: `size` images ("250") or a fraction of
    the pool ("5pct" or "5%": max(1, round(5/100 · pool)) images); the first rows of the seed's
    permutation of the pool, so the subsets of one seed are nested, counts and fractions alike."""
    pool_rows = read_rows(pool)
    rows = finetune_subset(pool_rows, size, seed)
    write_rows(out, np.sort(rows))
    print(f"size {size}: {len(rows)} of the {len(pool_rows)} pool images", flush=True)
