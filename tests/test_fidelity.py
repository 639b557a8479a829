"""The fidelity check (issue 14, item 2): its config trains seed 001's Table 1 cell with the full
protocol, and the comparison reads the right published numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sslseg.config import load_config
from sslseg.grid import runs
from sslseg.report.published import compare, markdown, published, published_table

ROOT = Path(__file__).resolve().parents[1]
FIDELITY = ROOT / "workflow" / "configs" / "fidelity.yaml"


def test_fidelity_config_is_table_1_at_250_pets_with_every_training_default():
    cfg = load_config(ROOT / "config.yaml", FIDELITY)
    default = load_config(ROOT / "config.yaml")
    grid = runs(cfg)
    assert {(r.pretrain, r.intermediate, r.adaptation, r.labels, r.finetune) for r in grid} == {(0, False, "finetune", "full", 250)}
    assert sorted(r.seed for r in grid) == [0, 1, 2]  # the paper's 3 runs
    # the protocol itself is untouched: model, fine-tune recipe, evaluation, the test draw's seed
    for key in ("model", "finetune", "evaluate", "train"):
        assert cfg[key] == default[key], key
    assert cfg["data"]["pets"]["test_seed"] == 42 and cfg["data"]["pets"]["resize"] == default["data"]["pets"]["resize"]
    # only data and resources are overridden in the file
    assert set(yaml.safe_load(FIDELITY.read_text())) <= {"name", "device", "data", "grid", "report", "resources"}


def test_published_numbers_are_seed_001s_tables():
    paper = published_table()
    cell = paper[(paper.table == "1") & (paper.finetune == 250)].iloc[0]
    assert (cell.acc_mean, cell.acc_std, cell.miou_mean, cell.miou_std) == (70.33, 0.89, 43.73, 1.02)
    assert len(paper) == 6 + 18 + 18  # Table 1, A2, A3
    a2 = paper[(paper.table == "A2") & (paper.pretrain == 200_000) & (paper.finetune == 250)].iloc[0]
    assert (a2.miou_mean, a2.intermediate) == (57.14, False)
    a3 = paper[(paper.table == "A3") & (paper.pretrain == 200_000) & (paper.finetune == 250)].iloc[0]
    assert a3.miou_mean == 49.93 and str(a3.intermediate).lower() == "true"


def _runs(miou: list[float], acc: list[float], pretrain: int = 0, size: int = 250, **axes) -> pd.DataFrame:
    base = dict(backbone="viny", objective="none" if pretrain == 0 else "simmim", data="none" if pretrain == 0 else "random",
                pretrain=pretrain, intermediate=0, adaptation="finetune", labels="full", finetune=size)
    base.update(axes)
    return pd.DataFrame([{**base, "seed": s, "miou": m / 100, "pixel_acc": a / 100} for s, (m, a) in enumerate(zip(miou, acc))])


def test_comparison_in_combined_standard_deviations():
    table = compare(_runs([41.0, 42.0, 43.0], [72.0, 73.0, 74.0]))
    assert len(table) == 1
    r = table.iloc[0]
    assert r.table == "1" and r.seeds == 3
    assert r.ours_miou == pytest.approx(42.0) and r.ours_miou_std == pytest.approx(1.0)  # ddof 1
    assert r.miou_diff == pytest.approx(42.0 - 43.73)
    assert r.miou_z == pytest.approx((42.0 - 43.73) / math.sqrt(1.0 + 1.02**2))
    assert r.acc_z == pytest.approx((73.0 - 70.33) / math.sqrt(1.0 + 0.89**2))
    assert bool(r.within)
    far = compare(_runs([30.0, 31.0, 32.0], [72.0, 73.0, 74.0])).iloc[0]
    assert not far.within and far.miou_z < -2


def test_only_the_papers_cells_are_compared():
    # a 64-px sample's cells, a probe, imperfect labels: none is a published cell
    other = pd.concat([_runs([40.0], [70.0], size=50), _runs([40.0], [70.0], adaptation="probe"),
                       _runs([40.0], [70.0], labels="scribbles")])
    assert compare(other).empty and markdown(compare(other)).startswith("No cell")
    # pretrained + intermediate cells go to Table A3
    a3 = compare(_runs([50.0, 50.0], [75.0, 75.0], pretrain=45_000, intermediate=1)).iloc[0]
    assert a3.table == "A3" and a3.miou_mean == 48.92


def test_published_command_writes_and_prints_the_table(tmp_path, capsys):
    _runs([41.0, 42.0, 43.0], [72.0, 73.0, 74.0]).to_csv(tmp_path / "runs.csv", index=False)
    published(str(tmp_path / "runs.csv"), str(tmp_path / "p.csv"), str(tmp_path / "p.md"))
    md = (tmp_path / "p.md").read_text()
    assert "42.00 ± 1.00 | 43.73 ± 1.02 | -1.73 (-1.2)" in md and "ddof 1" in md
    assert md == capsys.readouterr().out


def test_the_committed_fidelity_table_is_the_cell_beside_table_1():
    committed = pd.read_csv(ROOT / "docs" / "results" / "fidelity" / "published.csv", dtype={"table": str})
    assert len(committed) == 1
    row = committed.iloc[0]
    assert (row.table, row.pretrain, row.finetune, row.seeds) == ("1", 0, 250, 3)
    assert (row.acc_mean, row.acc_std, row.miou_mean, row.miou_std) == (70.33, 0.89, 43.73, 1.02)
    runs = pd.read_csv(ROOT / "docs" / "results" / "fidelity" / "runs.csv")
    assert row.ours_miou == pytest.approx(runs.miou.mean() * 100) and row.ours_miou_std == pytest.approx(runs.miou.std() * 100)
    readme = (ROOT / "docs" / "results" / "fidelity" / "README.md").read_text()
    assert f"{row.ours_miou:.2f} ± {row.ours_miou_std:.2f} | 43.73 ± 1.02 | −{-row.miou_diff:.2f} | {row.miou_z:.1f}".replace("-", "−") in readme
