"""The sample study (issue 14, item 3): every difference reported with its standard error, and
the committed results' README saying what its CSVs hold."""

from __future__ import annotations

import math

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
