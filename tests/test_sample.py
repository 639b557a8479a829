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
LONG = SAMPLE.parent / "sample-long"
PREVIOUS = LONG / "sample-1200"  # the previous sample's CSVs: 1,200 steps, 100 and 300 pets


def _signed(text: str) -> float:
    return float(text.replace("−", "-"))


def _readme_numbers() -> dict:
    text = (SAMPLE / "README.md").read_text()
    runs = re.search(r"\*\*(\d+)\*\* fine-tunes", text)
    border = re.search(r"lowest border IoU of any run: \*\*(\d\.\d+)\*\*", text)
    rows = re.findall(r"^\| (\d+) \| (\d+\.\d\d) ± (\d+\.\d\d) \| (\d+\.\d\d) ± (\d+\.\d\d) \| ([+−-]\d+\.\d\d) ± (\d+\.\d\d) \| (yes|no) \|$",
                      text, re.M)
    assert runs and border and rows, "the README's key numbers are not where this test reads them"
    return {"runs": int(runs[1]), "border": float(border[1]), "rows": rows}


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
        assert (_signed(d_mean), float(d_se)) == (round(d.delta_mean, 2), round(d.delta_se, 2))
        assert (beyond == "yes") == bool(d.beyond_2se)
    per_seed = re.search(r"Every seed agrees \(([^)]*)\)", text)
    assert per_seed and [_signed(x) for x in per_seed[1].split(", ")] == _paired(runs, "miou").round(2).tolist()
    conv = pd.read_csv(SAMPLE / "convergence.csv").query("stage == 'finetune'")
    change = re.search(r"\((−\d+\.\d) to (−\d+\.\d) % over", text)
    assert change and (_signed(change[1]), _signed(change[2])) == (round(100 * conv.last_10pct_change.min(), 1),
                                                                   round(100 * conv.last_10pct_change.max(), 1))


def _paired(runs: pd.DataFrame, column: str) -> pd.Series:
    """Pretrained − none in `column`, in points, per seed (paired, as pretrain_delta pairs them)."""
    by_seed = runs.pivot(index="seed", columns="pretrain", values=column)
    return 100 * (by_seed[1000] - by_seed[0])


def _pair(runs: pd.DataFrame, column: str) -> tuple[float, float]:
    """Mean and s.e. (ddof 1) over seeds of `_paired`."""
    d = _paired(runs, column)
    return d.mean(), d.std() / math.sqrt(len(d))


def _range(values: pd.Series) -> str:
    return f"{values.min():.3f}–{values.max():.3f}"


def test_the_sample_readme_states_each_effect_in_standard_errors_as_its_csvs_give_them():
    """Pixel accuracy, every per-class Δ in standard errors, the border and loss ranges per arm, and
    the comparison with the previous sample's 1,200-step runs of the same seeds."""
    text = (SAMPLE / "README.md").read_text()
    runs = pd.read_csv(SAMPLE / "runs.csv")
    none, pre = runs[runs.pretrain == 0], runs[runs.pretrain > 0]
    mean, se = _pair(runs, "miou")
    assert f"{abs(mean / se):.1f} standard errors" in text
    mean, se = _pair(runs, "pixel_acc")
    assert (f"{100 * none.pixel_acc.mean():.2f} → {100 * pre.pixel_acc.mean():.2f} %, "
            f"Δ −{abs(mean):.2f} ± {se:.2f} points ({abs(mean / se):.1f} s.e.") in text
    for name in ("border", "background", "pet"):
        mean, se = _pair(runs, f"iou_{name}")
        assert re.search(rf"{name} −{abs(mean):.2f} ± {se:.2f} \([^)]*{abs(mean / se):.1f} s\.e\.", text), name
    assert f"without pretraining {_range(none.iou_border)}, with it {_range(pre.iou_border)}" in text
    conv = pd.read_csv(SAMPLE / "convergence.csv").query("stage == 'finetune'")
    loss = {tag: conv[conv.run.str.contains(tag)].final_loss for tag in ("simmim", "scratch")}
    assert f"final loss {_range(loss['simmim'])} against {_range(loss['scratch'])}" in text
    old = pd.read_csv(PREVIOUS / "runs.csv").query("finetune == 300 and seed in @runs.seed")
    old_mean, old_se = _pair(old, "miou")
    mean, se = _pair(runs, "miou")
    assert (f"without pretraining {100 * old[old.pretrain == 0].miou.mean():.2f} → {100 * none.miou.mean():.2f} % "
            f"mIoU,\n  with it {100 * old[old.pretrain > 0].miou.mean():.2f} → {100 * pre.miou.mean():.2f} %, and the "
            f"cost of pretraining fell from −{abs(old_mean):.2f} ± {old_se:.2f} to −{abs(mean):.2f} ± {se:.2f}") in text


def test_every_sample_fine_tune_learns_the_border():
    """Issue 14's bar for the committed sample: the border class's IoU above 0.1 in every run."""
    runs = pd.read_csv(SAMPLE / "runs.csv")
    assert len(runs) == 6 and runs.iou_border.min() > 0.1


def _cell(folder: Path, pretrain: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The 300-pet runs of one pretraining, and their rows of convergence.csv."""
    runs = pd.read_csv(folder / "runs.csv")
    runs = runs[(runs.pretrain == pretrain) & (runs.finetune == 300)]
    tag = "scratch" if pretrain == 0 else "simmim-random-1000"
    conv = pd.read_csv(folder / "convergence.csv")
    return runs, conv[conv.run.str.startswith(f"runs/viny/{tag}-i0/finetune-full-n300-")]


def test_the_sample_long_readme_says_what_its_csvs_and_the_samples_hold():
    """Its per-pretraining rows (4,800 steps from its own CSVs, 1,200 from the previous sample's,
    the 300-pet cell, the same 4 seeds) and its paired differences; the sample's runs are its own
    seeds 0-2, the same numbers to the last digit (the same code, config and data)."""
    text = (LONG / "README.md").read_text()
    rows = re.findall(r"^\| (no pretraining|1,000-image SimMIM) \| ([\d,]+)[^|]* \| (\d+\.\d\d) ± (\d+\.\d\d) \| "
                      r"(\d+\.\d\d) ± (\d+\.\d\d) \| (\d\.\d{3}) \| (\d\.\d{3}) \| (−\d+\.\d) to (−\d+\.\d) % \|$", text, re.M)
    deltas = re.findall(r"^\| ([\d,]+)[^|]* \| ([+−]\d+\.\d\d) ± (\d+\.\d\d) \| (yes|no) \|$", text, re.M)
    lowest = re.search(r"lowest border IoU of the 4,800-step runs: \*\*(\d\.\d{3})\*\*", text)
    assert len(rows) == 4 and len(deltas) == 2 and lowest, "the README's tables are not where this test reads them"
    assert {(r[0], r[1]) for r in rows} == {(name, steps) for name in ("no pretraining", "1,000-image SimMIM")
                                           for steps in ("1,200", "4,800")}
    assert {d[0] for d in deltas} == {"1,200", "4,800"}
    for name, steps, miou, miou_sd, acc, acc_sd, border, loss, change_lo, change_hi in rows:
        folder = PREVIOUS if steps == "1,200" else LONG
        runs, conv = _cell(folder, 0 if name == "no pretraining" else 1000)
        assert len(runs) == len(conv) == 4 and sorted(runs.seed) == [0, 1, 2, 3]
        assert (float(miou), float(miou_sd)) == (round(100 * runs.miou.mean(), 2), round(100 * runs.miou.std(), 2))
        assert (float(acc), float(acc_sd)) == (round(100 * runs.pixel_acc.mean(), 2),
                                               round(100 * runs.pixel_acc.std(), 2))
        assert float(border) == round(runs.iou_border.min(), 3)
        assert float(loss) == round(conv.final_loss.mean(), 3)
        assert (_signed(change_lo), _signed(change_hi)) == (round(100 * conv.last_10pct_change.min(), 1),
                                                            round(100 * conv.last_10pct_change.max(), 1))
        assert set(conv.epochs) == {253 if steps == "4,800" else 64}
    for steps, mean, se, beyond in deltas:
        delta = pd.read_csv((PREVIOUS if steps == "1,200" else LONG) / "pretrain_delta.csv")
        d = delta[delta.finetune == 300].iloc[0]
        assert (_signed(mean), float(se), d.seeds) == (round(d.delta_mean, 2), round(d.delta_se, 2), 4)
        assert (beyond == "yes") == bool(d.beyond_2se)
    assert float(lowest[1]) == round(pd.read_csv(LONG / "runs.csv").iou_border.min(), 3)
    cols = ["pretrain", "seed", "miou", "pixel_acc", "iou_border"]
    sample = pd.read_csv(SAMPLE / "runs.csv")[cols].sort_values(["pretrain", "seed"]).reset_index(drop=True)
    long = pd.read_csv(LONG / "runs.csv")[cols]
    long = long[long.seed.isin(sample.seed)].sort_values(["pretrain", "seed"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(sample, long)
