"""The sample study (issue 14, item 3): every difference reported with its standard error, and
the committed results' README saying what its CSVs hold."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest

from sslseg.report.tables import pretrain_delta


def _run(pretrain: int, seed: int, miou: float, size: int = 50) -> dict:
    pre = pretrain > 0
    return dict(backbone="viny", objective="simmim" if pre else "none", data="random" if pre else "none",
                pretrain=pretrain, intermediate=0, adaptation="finetune", labels="full", finetune=size,
                seed=seed, miou=miou / 100, pixel_acc=0.5)


def test_pretraining_delta_is_paired_by_seed_with_its_standard_error():
    runs = pd.DataFrame([_run(0, s, m) for s, m in enumerate([30, 32, 34])]
                        + [_run(1000, s, m) for s, m in enumerate([31, 34, 35])]
                        + [_run(0, s, 40, size=150) for s in range(3)] + [_run(1000, s, 40, size=150) for s in range(3)])
    d = pretrain_delta(runs).set_index("finetune")
    # paired differences 1, 2, 1: mean 4/3, s.e. std(ddof 1)/√3; an unpaired s.e. would be larger
    assert d.loc[50, "delta_mean"] == pytest.approx(4 / 3)
    assert d.loc[50, "delta_se"] == pytest.approx(pd.Series([1.0, 2.0, 1.0]).std(ddof=1) / math.sqrt(3))
    assert d.loc[50, "seeds"] == 3 and bool(d.loc[50, "beyond_2se"])  # 1.33 > 2 × 0.33
    assert d.loc[150, "delta_mean"] == 0 and not d.loc[150, "beyond_2se"]
    assert set(d.objective) == {"simmim"} and set(d.pretrain) == {1000}


def test_a_seed_without_its_pair_is_left_out():
    runs = pd.DataFrame([_run(0, 0, 30), _run(0, 1, 30), _run(1000, 0, 35)])
    d = pretrain_delta(runs)
    assert d.seeds.tolist() == [1] and not d.beyond_2se.iloc[0]  # one pair: no s.e., never "beyond"


SAMPLE = Path(__file__).resolve().parents[1] / "docs" / "results" / "sample"


def _readme_numbers() -> dict:
    text = (SAMPLE / "README.md").read_text()
    runs = re.search(r"\*\*(\d+)\*\* fine-tunes", text)
    border = re.search(r"lowest border IoU of any run: \*\*(\d\.\d+)\*\*", text)
    rows = re.findall(r"^\| (\d+) \| (\d+\.\d\d) ± (\d+\.\d\d) \| (\d+\.\d\d) ± (\d+\.\d\d) \| ([+−-]\d+\.\d\d) ± (\d+\.\d\d) \| (yes|no) \|$",
                      text, re.M)
    beyond = re.search(r"\*\*(\d+) of (\d+)\*\* fine-tune sizes", text)
    assert runs and border and rows and beyond, "the README's key numbers are not where this test reads them"
    return {"runs": int(runs[1]), "border": float(border[1]), "rows": rows, "beyond": (int(beyond[1]), int(beyond[2]))}


def test_the_sample_readme_says_what_its_csvs_hold():
    readme = _readme_numbers()
    runs = pd.read_csv(SAMPLE / "runs.csv")
    summary = pd.read_csv(SAMPLE / "summary.csv")
    delta = pd.read_csv(SAMPLE / "pretrain_delta.csv")
    assert readme["runs"] == len(runs)
    assert readme["border"] == round(runs.iou_border.min(), 3)
    text = (SAMPLE / "README.md").read_text()
    below = int((runs.iou_border < 0.1).sum())
    assert f"{below} of {len(runs)} runs are below 0.1" in text
    assert len(readme["rows"]) == len(delta)
    for size, b_mean, b_std, p_mean, p_std, d_mean, d_se, beyond in readme["rows"]:
        base = summary[(summary.pretrain == 0) & (summary.finetune == int(size))].iloc[0]
        pre = summary[(summary.pretrain > 0) & (summary.finetune == int(size))].iloc[0]
        d = delta[delta.finetune == int(size)].iloc[0]
        assert (float(b_mean), float(b_std)) == (round(base.miou_mean, 2), round(base.miou_std, 2))
        assert (float(p_mean), float(p_std)) == (round(pre.miou_mean, 2), round(pre.miou_std, 2))
        assert (float(d_mean.replace("−", "-")), float(d_se)) == (round(d.delta_mean, 2), round(d.delta_se, 2))
        assert (beyond == "yes") == bool(d.beyond_2se)
    assert readme["beyond"] == (int(delta.beyond_2se.sum()), len(delta))


LONG = SAMPLE.parent / "sample-long"


def test_the_sample_long_readme_says_what_its_csvs_and_the_samples_hold():
    """Each row of its table: the 4,800-step runs from its own CSVs, the 1,200-step ones from the
    sample's, at 300 pets and seed 0."""
    rows = re.findall(r"^\| (no pretraining|1,000-image SimMIM) \| ([\d,]+)[^|]* \| (\d+\.\d\d) \| (\d+\.\d\d) \| "
                      r"(\d\.\d{3}) \| (\d\.\d{3}) \| −(\d+\.\d) % \|$", (LONG / "README.md").read_text(), re.M)
    assert len(rows) == 4, "the README's table is not where this test reads it"
    for name, steps, miou, acc, border, loss, change in rows:
        folder, pretrain = (LONG, 0) if name == "no pretraining" else (LONG, 1000)
        if steps == "1,200":
            folder = SAMPLE
        runs = pd.read_csv(folder / "runs.csv")
        run = runs[(runs.pretrain == pretrain) & (runs.finetune == 300) & (runs.seed == 0)].iloc[0]
        assert (float(miou), float(acc)) == (round(100 * run.miou, 2), round(100 * run.pixel_acc, 2))
        assert float(border) == round(run.iou_border, 3)
        conv = pd.read_csv(folder / "convergence.csv")
        tag = "scratch" if pretrain == 0 else "simmim-random-1000"
        c = conv[conv.run == f"runs/viny/{tag}-i0/finetune-full-n300-s0"].iloc[0]
        assert float(loss) == round(c.final_loss, 3) and -float(change) == round(100 * c.last_10pct_change, 1)
        assert c.epochs == (253 if steps == "4,800" else 64)
