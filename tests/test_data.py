"""Readers, HDF5 packs, splits and device augmentation, on the real samples and generated data."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from sslseg.data import sources
from sslseg.data.augment import augment, crop_params
from sslseg.data.demo import make_demo
from sslseg.data.loader import Batches
from sslseg.data.pack import pack, read_pack
from sslseg.data.splits import finetune_subset, draw_test_split
from sslseg.io import UserError

from conftest import need_shared


def test_oxford_reader_and_pack_roundtrip(pets_sample, tmp_path):
    records = sources.oxford_pets(pets_sample)
    assert len(records) == 24
    out = pack(records, tmp_path / "pets.h5", 64, "squash", threads=2)
    arrays = read_pack(out)
    assert arrays["images"].shape == (24, 64, 64, 3) and arrays["images"].dtype == np.uint8
    assert arrays["masks"].shape == (24, 64, 64) and set(np.unique(arrays["masks"])) <= {0, 1, 2}
    # same pixels as decoding by hand: the first image, resized the same way
    first = Image.open(records[0].image).convert("RGB").resize((64, 64), Image.BILINEAR)
    assert np.array_equal(arrays["images"][0], np.asarray(first))
    trimap = np.asarray(Image.open(records[0].trimap).resize((64, 64), Image.NEAREST)) - 1
    assert np.array_equal(arrays["masks"][0], trimap)
    with h5py.File(out) as f:
        assert f["names"][0].decode() == records[0].name and f.attrs["size"] == 64


def test_folder_reader_takes_imagenet_layout_and_nested_subsets():
    root = need_shared() / "imagenet-sample"
    records = sources.image_folder(root)
    assert len(records) == 1000 and len({r.label for r in records}) == 1000
    small = sources.subset_records(records, 100, seed=0, mode="random")
    large = sources.subset_records(records, 300, seed=0, mode="random")
    assert small == large[:100]
    strat = sources.subset_records(records, 50, seed=0, mode="stratified")
    assert len({r.label for r in strat}) == 50  # one per class before any class repeats
    with pytest.raises(UserError, match="larger than the 1000 images"):
        sources.subset_records(records, 1001, 0, "random")


def test_test_split_is_torch_random_split_with_seed_42():
    pool, test = draw_test_split(50, 10, 42)
    ref = torch.utils.data.random_split(range(50), [40, 10], generator=torch.Generator().manual_seed(42))
    assert list(test) == list(ref[1].indices) and list(pool) == list(ref[0].indices)
    assert list(draw_test_split(50, 10, 42)[1]) == list(test)  # deterministic


def test_finetune_subsets_are_deterministic_nested_and_disjoint_from_test():
    pool, test = draw_test_split(100, 20, 42)
    small, big = finetune_subset(pool, 10, 3), finetune_subset(pool, 40, 3)
    assert set(small) <= set(big) and not set(big) & set(test)
    assert list(finetune_subset(pool, 10, 3)) == list(small)
    assert set(finetune_subset(pool, 10, 4)) != set(small)
    with pytest.raises(UserError, match="grid.finetune_sizes: 81 is larger than the fine-tune pool of 80"):
        finetune_subset(pool, 81, 0)


def test_demo_set_is_read_by_the_real_readers(tmp_path):
    root = make_demo(tmp_path, pets=8, pretrain=6, intel_per_class=2)
    assert len(sources.oxford_pets(root)) == 8
    assert len(sources.image_folder(root / "imagenet")) == 6
    intel = sources.image_folder(root / "intel" / "seg_train")
    assert len(intel) == 12 and len({r.label for r in intel}) == 6


def test_augment_moves_masks_with_images_and_varies_per_sample():
    # An image whose red channel encodes the class of the mask: after any crop/flip,
    # the two must still agree pixel for pixel.
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (8, 1, 8, 8), generator=g).repeat_interleave(4, 2).repeat_interleave(4, 3)[:, 0]
    images = torch.stack([masks * 100, masks * 0, masks * 0], -1).to(torch.uint8)
    x, m = augment(images, masks.to(torch.uint8), 32, g, scale=(0.3, 1), ratio=(0.75, 1.33), flip=0.5, jitter=0)
    red = x[:, 0] * 0.229 + 0.485  # undo normalise
    agree = ((red * 255 / 100).round() == m).float().mean()
    assert agree > 0.9  # bilinear blurs block edges; a misaligned label map agrees ~1/3 of the time
    assert not torch.equal(m, masks.long())  # the labels were really cropped/flipped
    theta = crop_params(8, (0.3, 1), (0.75, 1.33), 0.5, torch.Generator().manual_seed(1))
    assert len({tuple(t.flatten().tolist()) for t in theta}) == 8


def test_loader_streams_in_contiguous_blocks_and_covers_every_row(tmp_path, monkeypatch):
    """The epoch order is one function of (rows, batch_size, seed): memory_gb never changes it."""
    import sslseg.data.loader as loader

    monkeypatch.setattr(loader, "MIN_BLOCK_ROWS", 128)  # blocks of 128 rows here, 65,536 in real runs
    with h5py.File(tmp_path / "p.h5", "w") as f:  # each row holds its own index
        f["images"] = np.arange(700, dtype=np.int32)[:, None]
        f["masks"] = -np.arange(700, dtype=np.int32)[:, None]

    def epoch(rows, drop_last, seed, memory_gb=8.0):
        b = Batches(tmp_path / "p.h5", rows, 4, torch.device("cpu"), ("images", "masks"), memory_gb, drop_last)
        batches = list(b.epoch(seed))
        assert all(torch.equal(x["masks"], -x["images"]) for x in batches)  # keys stay together
        return b.streamed, batches

    # 302 contiguous rows from 5: three blocks of batch_size * 32 = 128 rows, the last partial
    rows = np.arange(5, 307)
    for drop_last in (True, False):
        for seed in (1, 2, None):  # 1 and 2 visit the partial block mid-epoch: batches straddle blocks
            (m, in_memory), (s, streamed) = epoch(rows, drop_last, seed), epoch(rows, drop_last, seed, 1e-9)
            assert not m and s
            assert len(in_memory) == len(streamed) == (75 if drop_last else 76)
            assert all(torch.equal(a["images"], b["images"]) for a, b in zip(in_memory, streamed))
            seen = torch.cat([x["images"][:, 0] for x in streamed]).tolist()
            assert len(set(seen)) == len(seen) and set(seen) <= set(rows.tolist())
            assert drop_last or sorted(seen) == rows.tolist()  # every row once
            assert (seen == rows.tolist()[:len(seen)]) == (seed is None)  # shuffled unless no seed
    # within one block (40 rows): exactly the order of torch.randperm seeded like the epoch
    rows = np.arange(40)
    ref = torch.randperm(40, generator=torch.Generator().manual_seed(3)).tolist()
    for memory_gb in (8.0, 1e-9):
        streamed, batches = epoch(rows, False, 3, memory_gb)
        assert streamed == (memory_gb < 1)
        assert torch.cat([x["images"][:, 0] for x in batches]).tolist() == ref
    # a non-contiguous set (a fine-tune subset) is never streamed, and keeps randperm over all its rows
    rows = np.arange(0, 700, 2)
    streamed, batches = epoch(rows, False, 3, 1e-9)
    assert not streamed
    perm = torch.randperm(350, generator=torch.Generator().manual_seed(3))
    assert torch.cat([x["images"][:, 0] for x in batches]).tolist() == rows[perm.numpy()].tolist()
