"""Imperfect labels from the real trimaps (study B): sparse labels never lie, noisy ones get worse
with strength, everything is reproducible per (seed, row), and the stage caches what it measured."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, need_shared
from sslseg.data.sources import open_trimap
from sslseg.data.weak_labels import IGNORE, generate, generate_rows, quality
from sslseg.io import UserError

SCRIBBLES = {"strokes": 2, "width": 3, "length": 0.3}
POINTS = {"per_class": 5}


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    """(24, 128, 128) trimap classes of the first real samples, resized as the pack does."""
    src = need_shared() / "oxford-iiit-pet" / "annotations"
    names = [ln.split()[0] for ln in (src / "trainval.txt").read_text().splitlines()[:24]]
    masks = []
    for name in names:
        path = src / "trimaps" / f"{name}.png"
        with Image.open(path) as im:
            size = im.size
        masks.append(np.asarray(Image.fromarray(open_trimap(path, size)).resize((128, 128), Image.NEAREST)))
    return np.stack(masks)


def make(truth: np.ndarray, kind: str, params: dict, seed: int = 0) -> np.ndarray:
    return generate_rows(truth, np.arange(len(truth)), kind, params, seed)


def test_ignore_is_the_loss_ignore_index():
    from sslseg.objectives.segment import IGNORE as LOSS_IGNORE

    assert IGNORE == LOSS_IGNORE


@pytest.mark.parametrize("kind,params", [("scribbles", SCRIBBLES), ("scribbles", {**SCRIBBLES, "width": 6}),
                                         ("points", POINTS), ("points", {"per_class": 3, "radius": 2})])
def test_every_sparse_label_is_true(truth, kind, params):
    labels = make(truth, kind, params)
    keep = labels != IGNORE
    assert keep.any() and (labels[keep] == truth[keep]).all()
    assert quality(labels, truth)["pixel_acc"] == 1.0


def test_points_label_exactly_per_class_pixels_of_each_class(truth):
    labels = make(truth, "points", POINTS)
    for lab, t in zip(labels, truth):
        for c in np.unique(t):
            assert (lab == c).sum() == 5
        assert (lab != IGNORE).sum() == 5 * len(np.unique(t))


def test_scribbles_cover_more_with_more_and_wider_strokes_but_stay_sparse(truth):
    by_strokes = [quality(make(truth, "scribbles", {**SCRIBBLES, "strokes": s}), truth)["labelled_fraction"]
                  for s in (1, 2, 4)]
    by_width = [quality(make(truth, "scribbles", {**SCRIBBLES, "width": w}), truth)["labelled_fraction"]
                for w in (1, 3, 5)]
    assert by_strokes == sorted(by_strokes) and by_width == sorted(by_width), (by_strokes, by_width)
    assert 0 < by_strokes[0] and max(by_strokes + by_width) < 0.2
    # every class present gets a stroke at the default width (the border ring is thick enough)
    labels = make(truth, "scribbles", SCRIBBLES)
    assert all(set(np.unique(t)) <= set(np.unique(lab)) for lab, t in zip(labels, truth))


@pytest.mark.parametrize("noise,strengths,clean", [("boundary", [1, 3, 6], 0), ("boundary", [-1, -3, -6], 0),
                                                   ("coarse", [2, 4, 8, 16], 1), ("flip", [0.05, 0.2, 0.4], 0.0)])
def test_noisy_masks_are_dense_and_worse_with_strength(truth, noise, strengths, clean):
    assert (make(truth, "noisy", {"noise": noise, "strength": clean}) == truth).all()
    mious = []
    for s in strengths:
        labels = make(truth, "noisy", {"noise": noise, "strength": s})
        q = quality(labels, truth)
        assert q["labelled_fraction"] == 1.0 and labels.max() <= 2
        mious.append(q["miou"])
    assert 1.0 > mious[0] and mious == sorted(mious, reverse=True), mious


def test_flip_rate_and_blobs(truth):
    for blob, tol in ((1, 0.01), (8, 0.05)):
        labels = make(truth, "noisy", {"noise": "flip", "strength": 0.2, "blob": blob})
        assert abs(1 - quality(labels, truth)["pixel_acc"] - 0.2) < tol
    shift = (labels.astype(int) - truth) % 3  # 0 kept, 1 or 2: the class offset of a flipped cell
    cells = shift.reshape(len(truth), 16, 8, 16, 8)
    assert (cells.min((2, 4)) == cells.max((2, 4))).all()  # one decision per 8×8 blob


@pytest.mark.parametrize("kind,params", [("scribbles", SCRIBBLES), ("points", POINTS),
                                         ("noisy", {"noise": "flip", "strength": 0.2}),
                                         ("noisy", {"noise": "coarse", "strength": 8})])
def test_same_seed_same_labels_other_seed_other_labels(truth, kind, params):
    a, b, c = make(truth, kind, params, 0), make(truth, kind, params, 0), make(truth, kind, params, 1)
    assert (a == b).all() and (a != c).any()


def test_a_rows_labels_do_not_depend_on_the_other_rows(truth):
    rows = np.arange(100, 100 + len(truth))  # pack rows of these images
    every = generate_rows(truth, rows, "scribbles", SCRIBBLES, 3)
    some = np.array([2, 5, 11, 17])
    alone = generate_rows(truth[some], rows[some], "scribbles", SCRIBBLES, 3)
    assert (alone == every[some]).all()
    single = generate(truth[5], "scribbles", SCRIBBLES, np.random.default_rng([3, 105]))
    assert (single == every[5]).all()


def test_quality_on_hand_made_2x2_cases():
    truth = np.array([[[0, 1], [2, 1]], [[0, 2], [1, 1]]], np.uint8)
    labels = np.array([[[0, IGNORE], [1, 1]], [[IGNORE, IGNORE], [IGNORE, 1]]], np.uint8)
    q = quality(labels[:1], truth[:1])
    # labelled 3 of 4; right: (0,0) pet and (1,1) background; the border pixel is called background
    assert q["labelled_fraction"] == 0.75 and q["pixel_acc"] == pytest.approx(2 / 3)
    assert q["iou_per_class"] == [1.0, 0.5, 0.0] and q["miou"] == pytest.approx(0.5)
    q = quality(labels[1:], truth[1:])  # pet and border only on unlabelled pixels: no IoU, not 0
    assert q["labelled_fraction"] == 0.25 and q["pixel_acc"] == 1.0 and q["miou"] == 1.0
    assert math.isnan(q["iou_per_class"][0]) and math.isnan(q["iou_per_class"][2])
    q = quality(labels, truth)  # one confusion matrix over both images
    assert q["images"] == 2 and q["labelled_fraction"] == 0.5 and q["labelled_pixels_min"] == 1
    assert q["pixel_acc"] == 0.75 and q["iou_per_class"] == [1.0, pytest.approx(2 / 3), 0.0]


def test_an_image_left_without_labels_is_a_one_line_error_naming_the_key(truth):
    with pytest.raises(UserError) as err:
        generate_rows(truth[:3], np.array([7, 8, 9]), "scribbles", {**SCRIBBLES, "width": 200}, 0,
                      names=["cat_1", "dog_2", "cat_3"])
    msg = str(err.value)
    assert "\n" not in msg and "labels.scribbles.width: 200" in msg and "cat_1" in msg and "cat_1 and 2 more" in msg


@pytest.mark.parametrize("kind,params,key", [("points", {"per_class": 0}, "labels.points.per_class"),
                                             ("scribbles", {**SCRIBBLES, "length": 1.5}, "labels.scribbles.length"),
                                             ("noisy", {"noise": "blur", "strength": 1}, "labels.noisy.noise"),
                                             ("noisy", {"noise": "flip", "strength": 2}, "labels.noisy.strength"),
                                             ("noisy", {"noise": "coarse", "strength": "8"}, "labels.noisy.strength"),
                                             ("lines", {}, "labels.kind")])
def test_bad_settings_are_one_line_errors_naming_the_key(truth, kind, params, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")) as err:
        generate(truth[0], kind, params, np.random.default_rng(0))
    assert "\n" not in str(err.value)


@pytest.fixture
def pets_pack(pets_sample, tmp_path):
    from sslseg.stages.data import pack_pets

    pack_pets(str(pets_sample), str(tmp_path / "pets.h5"), {"image_size": 64, "download": False, "resize": "crop"})
    return tmp_path / "pets.h5"


def test_stage_caches_labels_of_the_pool_and_their_quality(pets_pack, tmp_path):
    from sslseg.data.pack import read_pack
    from sslseg.stages.labels import weak_labels

    pool = np.array([20, 3, 7, 11, 0, 15, 9])  # unsorted, as the splits stage writes the pool
    (tmp_path / "pool.txt").write_text("\n".join(map(str, pool)) + "\n")
    (tmp_path / "small.txt").write_text("3\n11\n")
    settings = {"kind": "scribbles", **SCRIBBLES}
    for name in ("pool", "small"):
        weak_labels(str(pets_pack), str(tmp_path / f"{name}.txt"), str(tmp_path / f"{name}.h5"),
                    str(tmp_path / f"{name}.json"), settings, seed=4)
    truth = read_pack(pets_pack, None, ("masks",))["masks"]
    with h5py.File(tmp_path / "pool.h5") as f:
        masks, ds = f["masks"][()], f["masks"]
        assert ds.shape == truth.shape and ds.chunks == (1, 64, 64) and ds.compression == "gzip"
        assert f.attrs["kind"] == "scribbles" and f.attrs["seed"] == 4
        assert json.loads(f.attrs["params"]) == SCRIBBLES and (f["rows"][()] == np.sort(pool)).all()
    outside = np.setdiff1d(np.arange(len(truth)), pool)
    assert (masks[outside] == IGNORE).all()
    inside = masks[np.sort(pool)]
    assert ((inside == IGNORE) | (inside == truth[np.sort(pool)])).all()
    assert (inside == generate_rows(truth[np.sort(pool)], np.sort(pool), "scribbles", SCRIBBLES, 4)).all()
    with h5py.File(tmp_path / "small.h5") as f:  # the smaller budget: same labels for its images
        assert (f["masks"][[3, 11]] == masks[[3, 11]]).all()
    q = json.loads((tmp_path / "pool.json").read_text())
    again = quality(inside, truth[np.sort(pool)])
    assert {k: q[k] for k in again} == again and q["images"] == len(pool)
    assert q["kind"] == "scribbles" and q["params"] == SCRIBBLES and q["seed"] == 4
    assert json.loads((tmp_path / "pool.h5.json").read_text())["settings"] == settings


def test_stage_names_the_image_left_without_labels(pets_pack, tmp_path):
    from sslseg.stages.labels import weak_labels

    (tmp_path / "pool.txt").write_text("1\n2\n")
    with pytest.raises(UserError, match=r"labels\.scribbles\.width: 99 leaves image \w+_\d+ "):
        weak_labels(str(pets_pack), str(tmp_path / "pool.txt"), str(tmp_path / "l.h5"), str(tmp_path / "q.json"),
                    {"kind": "scribbles", **SCRIBBLES, "width": 99}, seed=0)
    assert not list(tmp_path.glob("l.h5*")) and not (tmp_path / "q.json").exists()


def test_cli_command(pets_pack, tmp_path):
    (tmp_path / "pool.txt").write_text("0\n5\n")
    proc = subprocess.run([sys.executable, "-m", "sslseg", "weak_labels", "--pets", str(pets_pack),
                           "--pool", str(tmp_path / "pool.txt"), "--out", str(tmp_path / "l.h5"),
                           "--quality", str(tmp_path / "q.json"), "--seed", "1",
                           "--settings", json.dumps({"kind": "points", **POINTS})],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "q.json").read_text())["pixel_acc"] == 1.0


def test_stage_refuses_rows_outside_the_pack(pets_pack, tmp_path):
    from sslseg.stages.labels import weak_labels

    (tmp_path / "pool.txt").write_text("1\n999\n")
    with pytest.raises(UserError, match=r"pool\.txt: rows must be among the 24 images"):
        weak_labels(str(pets_pack), str(tmp_path / "pool.txt"), str(tmp_path / "l.h5"), str(tmp_path / "q.json"),
                    {"kind": "points", **POINTS}, seed=0)
