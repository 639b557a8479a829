"""Study A's pieces: the Intel reader, MixUp, the Δ with its standard error, the grids' job counts,
and the messages for data that must be provided by hand."""

from __future__ import annotations

import math
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from sslseg.data import sources
from sslseg.data.sources import INTEL_CLASSES
from sslseg.io import UserError
from sslseg.objectives.classify import mixup
from sslseg.report.tables import delta, summarise

from conftest import ROOT, need_shared, planned_jobs


def test_intel_reader_labels_by_the_six_fixed_classes():
    root = need_shared() / "intel-scenes"
    train = sources.image_folder(root / "seg_train", INTEL_CLASSES)
    test = sources.image_folder(root / "seg_test", INTEL_CLASSES)
    assert len(train) == 2400 and len(test) == 600
    assert np.bincount([r.label for r in train]).tolist() == [400] * 6
    sea = [r for r in test if r.image.parent.name == "sea"]
    assert {r.label for r in sea} == {INTEL_CLASSES.index("sea")}


def test_intel_reader_rejects_a_foreign_class_folder(tmp_path):
    (tmp_path / "seg_train" / "beach").mkdir(parents=True)
    need = need_shared() / "intel-scenes" / "seg_train" / "sea"
    (tmp_path / "seg_train" / "beach" / "1.jpg").write_bytes(next(need.iterdir()).read_bytes())
    with pytest.raises(UserError, match="'beach' is not one of the expected classes"):
        sources.image_folder(tmp_path / "seg_train", INTEL_CLASSES)


def test_intel_archive_in_kaggles_nested_layout_is_unpacked(tmp_path):
    src = need_shared() / "intel-scenes"
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as z:  # Kaggle nests seg_train/seg_train/<class>/
        for split in ("seg_train", "seg_test"):
            for cls in INTEL_CLASSES:
                for f in sorted((src / split / cls).iterdir())[:2]:
                    z.write(f, f"{split}/{split}/{cls}/{f.name}")
    out = sources.extract_intel(archive, tmp_path / "intel")
    assert len(sources.image_folder(out / "seg_train", INTEL_CLASSES)) == 12
    assert len(sources.image_folder(out / "seg_test", INTEL_CLASSES)) == 12
    (tmp_path / "bad.zip").write_bytes(b"PK not really")
    with pytest.raises(UserError, match="not a valid zip archive"):
        sources.extract_intel(tmp_path / "bad.zip", tmp_path / "x")


def test_mixup_mixes_images_and_targets_with_the_same_lambda():
    torch.manual_seed(1)
    images = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])
    mixed, target = mixup(images, torch.tensor([0, 5]), 6, alpha=0.2)
    lam = 1 - mixed[0, 0, 0, 0].item()  # image 0 = lam * 0 + (1 - lam) * 1
    assert 0 < lam < 1
    assert target[0, 0].item() == pytest.approx(lam, abs=1e-6) and target[0, 5].item() == pytest.approx(1 - lam, abs=1e-6)
    assert torch.allclose(target.sum(1), torch.ones(2))
    same, hard = mixup(images, torch.tensor([0, 5]), 6, alpha=0.0)
    assert torch.equal(same, images) and hard[1, 5] == 1


def test_delta_pairs_runs_by_seed_and_reports_the_standard_error():
    rows = []
    for seed, (without, with_) in enumerate([(0.50, 0.47), (0.52, 0.48), (0.54, 0.52)]):
        rows += [dict(pretrain=100, intermediate=0, finetune=250, seed=seed, miou=without, pixel_acc=0.8),
                 dict(pretrain=100, intermediate=1, finetune=250, seed=seed, miou=with_, pixel_acc=0.8)]
    d = delta(pd.DataFrame(rows)).iloc[0]
    diffs = np.array([-3.0, -4.0, -2.0])  # percentage points
    assert d.delta_mean == pytest.approx(diffs.mean())
    assert d.delta_se == pytest.approx(diffs.std(ddof=1) / math.sqrt(3))
    s = summarise(pd.DataFrame(rows))
    assert s.loc[s.intermediate == 0, "miou_mean"].item() == pytest.approx(52.0)
    assert s.loc[s.intermediate == 0, "miou_std"].item() == pytest.approx(2.0)


@pytest.mark.parametrize("kind,needle", [("pretrain", "image-net.org"), ("intermediate", "kaggle.com")])
def test_data_provided_by_hand_says_where_to_get_it(tmp_path, kind, needle):
    with pytest.raises(UserError) as e:
        sources.image_folder(tmp_path / "missing", hint=sources.HINTS[kind])
    assert needle in str(e.value) and "missing" in str(e.value)


def test_imagenette_without_download_says_how_to_fetch_it(tmp_path):
    with pytest.raises(UserError, match="data.pretrain.download: true"):
        sources.imagenette(tmp_path, download=False)


def test_sample_config_plans_the_scaled_grid():
    jobs = planned_jobs(ROOT, "--configfile", "workflow/configs/sample.yaml")
    assert jobs["pretrain"] == 1 and "intermediate" not in jobs  # 1,000 images or none; no intermediate step
    assert jobs["finetune"] == jobs["evaluate"] == 2 * 1 * 3  # 2 pretrainings x 1 size x 3 seeds
    assert sum(jobs.values()) == 27  # the count docs/results/sample/README.md states


def test_sample_long_is_the_sample_with_a_fourth_seed():
    jobs = planned_jobs(ROOT, "--configfile", "workflow/configs/sample.yaml", "workflow/configs/sample-long.yaml")
    assert jobs["pretrain"] == 1 and jobs["finetune"] == jobs["evaluate"] == 2 * 1 * 4
    assert sum(jobs.values()) == 32  # the count workflow/configs/sample-long.yaml and README.md state
