"""The committed samples of studies C and D (issue 11, item 9): their configs plan what their
READMEs say, and every number the READMEs state is what the committed CSVs hold."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from sslseg import grid
from sslseg.config import load_config
from sslseg.report.tables import read_runs

RESULTS = ROOT / "docs" / "results"
MINUS = str.maketrans({"−": "-"})


def _num(text: str) -> float:
    return float(text.translate(MINUS))


def _delta_rows(text: str, first: str) -> list[tuple]:
    """Rows `| <first column> | <budget> | Δ ± s.e. | yes/no |` of a README table."""
    return re.findall(rf"^\| ({first}) \| (\d+%) \| ([+−-]?\d+\.\d\d) ± (\d+\.\d\d) \| (yes|no) \|$", text, re.M)


@pytest.mark.parametrize("name,runs,jobs", [("sample-c", 30, 82), ("sample-d", 36, 97)])
def test_the_sample_configs_plan_what_their_readmes_say(name, runs, jobs):
    cfg = load_config(ROOT / "config.yaml", ROOT / "workflow" / "configs" / f"{name}.yaml")
    assert len(grid.runs(cfg)) == runs
    text = (RESULTS / name / "README.md").read_text()
    assert f"**{runs}** fine-tunes" in text and f"**{jobs} jobs, " in text
    assert len(read_runs(RESULTS / name / "runs.csv")) == runs


def _check_delta_table(name: str, column: str, values: str, cells: int) -> str:
    """The README's Δ table of sample `name` (rows named by `column`) equals its pretrain_delta.csv,
    and its count of cells beyond 2 s.e. is right; returns the README's text."""
    text = (RESULTS / name / "README.md").read_text()
    delta = pd.read_csv(RESULTS / name / "pretrain_delta.csv")
    rows = _delta_rows(text, values)
    assert len(rows) == len(delta) == cells
    for value, budget, mean, se, beyond in rows:
        d = delta[(delta[column] == value) & (delta.finetune.astype(str) == budget)].iloc[0]
        assert (_num(mean), float(se)) == (round(d.delta_mean, 2), round(d.delta_se, 2))
        assert (beyond == "yes") == bool(d.beyond_2se)
    assert f"**{int(delta.beyond_2se.sum())} of {len(delta)}** cells" in text
    return text


def _paired(runs: pd.DataFrame, axis: str, a: str, b: str, budget: str) -> tuple[float, float]:
    cell = runs[runs.finetune.astype(str) == budget].pivot_table(index="seed", columns=axis, values="miou") * 100
    d = cell[a] - cell[b]
    return round(d.mean(), 2), round(d.std(ddof=1) / np.sqrt(len(d)), 2)


def test_sample_c_readme_says_what_its_csvs_hold():
    text = _check_delta_table("sample-c", "data", "in_domain|out_domain|mixed", 6)
    runs = read_runs(RESULTS / "sample-c" / "runs.csv")
    vit = runs[runs.backbone == "viny"]
    for budget, words in (("100%", "on the whole split"), ("50%", "on half of it")):
        mean, se = _paired(vit, "data", "in_domain", "out_domain", budget)
        assert f"{mean:.2f} ± {se:.2f} points {words}".replace("-", "−") in text


def test_sample_d_readme_says_what_its_csvs_hold():
    text = _check_delta_table("sample-d", "objective", "simmim|dep|ddep", 9)
    runs = read_runs(RESULTS / "sample-d" / "runs.csv")
    said = re.search(r"−?\d\.\d\d ± \d\.\d\d points at 5 %, (−?\d\.\d\d) ± (\d\.\d\d) at 20 %, (−?\d\.\d\d) ± "
                     r"(\d\.\d\d) at 100 %", text)
    assert said, "the README's ddep − simmim sentence is not where this test reads it"
    for budget, (mean, se) in (("20%", said.groups()[:2]), ("100%", said.groups()[2:])):
        assert (_num(mean), float(se)) == _paired(runs, "objective", "ddep", "simmim", budget)
    conv = pd.read_csv(RESULTS / "sample-d" / "convergence.csv")
    denoise = conv[(conv.stage == "pretrain") & conv.run.str.contains("/dep-|/ddep-")]
    assert len(denoise) == 2 and (denoise.final_loss.round(3) == 1.0).all()  # "stayed at 1.000"
    assert runs.iou_border.max() < 0.01  # "below 1 % in all 36 runs"
