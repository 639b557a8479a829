"""Study B's report: the probe − fine-tune Δ (paired by seed), the label-quality table, their
figures, and the label examples, on synthetic runs and a tiny synthetic pack."""

from __future__ import annotations

import itertools
import json
import math

import h5py
import numpy as np
import pandas as pd
import pytest

from sslseg.cli import command_parser, outputs
from sslseg.io import UserError
from sslseg.report.figures import TRIMAP_COLOURS, figures, label_figures
from sslseg.report.labels import label_examples, label_name, overlay
from sslseg.report.tables import label_quality, probe_delta, tables

SETTINGS = {"style": "whitegrid", "dpi": 40}
OFFSET = {"full": -0.02, "noisy": 0.05, "scribbles": 0.03, "points": 0.04}  # probe − fine-tune mIoU, plus 0.01 per seed


def _runs() -> pd.DataFrame:
    """Every axis column; fine-tune mIoU far apart between seeds (so only pairing by seed gives a
    small s.e.), probe = fine-tune + OFFSET[labels] + 0.01 * seed. Rows shuffled."""
    rows = []
    for pretrain, inter, adapt, labels, n, seed in itertools.product(
            (0, 100), (0, 1), ("finetune", "probe"), tuple(OFFSET), (8, 16), (0, 1, 2)):
        miou = 0.3 + 0.1 * seed + 0.001 * n + 0.02 * inter + (0.03 if pretrain else 0)
        if adapt == "probe":
            miou += OFFSET[labels] + 0.01 * seed
        rows.append(dict(backbone="viny", objective="simmim" if pretrain else "none",
                         data="random" if pretrain else "none", pretrain=pretrain, intermediate=inter,
                         adaptation=adapt, labels=labels, finetune=n, seed=seed, miou=miou, pixel_acc=0.8))
    return pd.DataFrame(rows).sample(frac=1, random_state=0).reset_index(drop=True)


@pytest.fixture
def runs_csv(tmp_path):
    path = tmp_path / "runs.csv"
    _runs().to_csv(path, index=False)
    return str(path)


@pytest.fixture
def quality_csv(tmp_path):
    files = []
    # noisy: dense, partly wrong; scribbles and points: exact where they label (mIoU 1), sparse
    for kind, seed, miou, acc, frac in [("noisy", 0, 0.70, 0.8, 1.0), ("noisy", 1, 0.74, 0.84, 1.0),
                                        ("noisy", 2, 0.72, 0.82, 1.0), ("scribbles", 0, 1.0, 1.0, 0.05),
                                        ("points", 0, 1.0, 1.0, 0.001)]:
        files.append(tmp_path / f"{kind}-s{seed}.quality.json")
        files[-1].write_text(json.dumps(dict(kind=kind, seed=seed, miou=miou, pixel_acc=acc,
                                             labelled_fraction=frac, iou_per_class=[miou] * 3, images=10)))
    out = tmp_path / "report" / "label_quality.csv"
    table = label_quality([str(f) for f in files], str(out))
    assert table.set_index("kind").loc["noisy", "miou"] == pytest.approx(0.72)
    assert table.set_index("kind").loc["noisy", "seeds"] == 3
    assert "mean over 1–3 seeds" in out.with_suffix(".md").read_text()
    return str(out)


def test_probe_delta_is_paired_by_seed_with_the_standard_error():
    d = probe_delta(_runs())
    assert len(d) == 2 * 2 * 4 * 2  # pretrain x intermediate x labels x finetune
    assert (d.seeds == 3).all()
    for labels, offset in OFFSET.items():
        diffs = (offset + 0.01 * np.arange(3)) * 100  # percentage points, one per seed
        part = d[d["labels"] == labels]
        assert part.delta_mean.to_numpy() == pytest.approx(np.full(len(part), diffs.mean()))
        # paired: the seeds' 10-point spread in fine-tune mIoU cancels; unpaired it would not
        assert part.delta_se.to_numpy() == pytest.approx(np.full(len(part), diffs.std(ddof=1) / math.sqrt(3)))


def test_tables_write_the_probe_delta_when_both_adaptations_are_present(runs_csv, tmp_path):
    tables(runs_csv, str(tmp_path / "tables" / "study"))
    study = tmp_path / "tables" / "study"
    md = (study / "probe_delta.md").read_text()
    assert "mean ± s.e. over 3 seeds" in md and "| noisy |" in md and "6.00 ± 0.58" in md
    assert pd.read_csv(study / "probe_delta.csv").delta_mean.round(6).isin([6.0, -1.0, 4.0, 5.0]).all()
    summary = pd.read_csv(tmp_path / "tables" / "summary.csv")
    assert {"adaptation", "labels"} <= set(summary.columns) and (summary.seeds == 3).all()
    assert "adaptation" in (study / "table1.md").read_text()  # varying axes get a column
    one = _runs().query("adaptation == 'finetune'")  # a single adaptation: no probe table
    one.to_csv(tmp_path / "one.csv", index=False)
    tables(str(tmp_path / "one.csv"), str(tmp_path / "one"))
    assert not (tmp_path / "one" / "probe_delta.md").exists()


def test_label_kinds_are_ordered_by_pixels_labelled_correctly_not_merged(quality_csv):
    """Scribbles, points and full labels all have mIoU 1 where they label: one quality scale would
    put them on one point; each kind keeps its own place, with its measured quality named."""
    from sslseg.report.figures import label_axis

    kinds, ticks = label_axis(pd.read_csv(quality_csv).set_index("kind"), {"points", "full", "scribbles", "noisy"})
    assert kinds == ["full", "noisy", "scribbles", "points"]
    assert ticks[1] == "noisy\nmIoU 72%\n100.0% labelled" and ticks[3] == "points\nmIoU 100%\n0.1% labelled"


def test_figures_split_adaptations_and_label_qualities(runs_csv, quality_csv, tmp_path):
    figures(runs_csv, str(tmp_path / "fig_miou.png"), SETTINGS, str(tmp_path / "fig_delta.png"))
    label_figures(runs_csv, SETTINGS, quality=quality_csv, out=str(tmp_path / "fig_label_quality.png"),
                  delta_out=str(tmp_path / "fig_probe_delta.png"))
    for name in ("fig_miou", "fig_delta", "fig_label_quality", "fig_probe_delta"):
        assert (tmp_path / f"{name}.png").stat().st_size > 5000
        assert (tmp_path / f"{name}.pdf").stat().st_size > 1000
    with pytest.raises(UserError, match="needs --quality"):
        label_figures(runs_csv, SETTINGS, out=str(tmp_path / "x.png"))


def test_label_figures_is_a_command_with_its_outputs_checked():
    p = command_parser("label_figures", label_figures)
    args = vars(p.parse_args(["--runs", "r.csv", "--quality", "q.csv", "--out", "a.png", "--delta-out", "b.png",
                              "--settings", json.dumps(SETTINGS)]))
    assert outputs(label_figures, args) == ["a.png", "b.png"]


def test_label_examples_draws_each_kind_over_the_image(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    truth = rng.integers(0, 3, (6, 16, 16), dtype=np.uint8)
    with h5py.File(tmp_path / "pets.h5", "w") as f:
        f["images"], f["masks"] = images, truth
    labels = []
    for kind, keep in (("scribbles", 0.1), ("noisy", 1.0)):
        masks = np.where(rng.random(truth.shape) < keep, truth, 255).astype(np.uint8)
        labels.append(str(tmp_path / f"{kind}-s0.h5"))
        with h5py.File(labels[-1], "w") as f:
            f["masks"] = masks
    (tmp_path / "pool.txt").write_text("4\n1\n3\n")
    out = tmp_path / "label_examples.png"
    label_examples(str(tmp_path / "pets.h5"), str(tmp_path / "pool.txt"), labels, str(out),
                   {"examples": 2, "dpi": 40})
    assert out.stat().st_size > 1000 and out.with_suffix(".pdf").exists()
    drawn = overlay(images[0], np.where(np.arange(16) < 8, truth[0], 255).astype(np.uint8))
    assert (drawn[:, :8] == TRIMAP_COLOURS[truth[0][:, :8]]).all()  # labelled: class colour
    assert (drawn[:, 8:] < images[0][:, 8:].astype(int) + 1).all()  # unlabelled: the image, dimmed
    assert label_name("/x/points-s12.h5") == ("points", 12)
    with pytest.raises(UserError, match="<kind>-s<seed>.h5"):
        label_name("labels.h5")
