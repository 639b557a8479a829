"""The grid: axes → runs → paths, for grids beyond study A's (several backbones, data sets,
no baseline, intermediate only, a ResNet), and the figures and tables that read it."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import ROOT
from sslseg import grid
from sslseg.config import load_config, merge, validate
from sslseg.io import UserError


def config(**grid_over) -> dict:
    """The default config with study A's two downstream axes (fine-tune, full labels) unless given,
    and batches small enough for the tiny sizes some tests use (the run list ignores them)."""
    cfg = load_config(ROOT / "config.yaml")
    small = {stage: {"batch_size": 4} for stage in ("pretrain", "finetune", "probe")}
    return validate(merge(cfg, {**small, "grid": {"adaptations": ["finetune"], "labels": ["full"], **grid_over}}))


def test_default_grid_holds_the_seeds_studies_a_and_b():
    runs = grid.runs(load_config(ROOT / "config.yaml"))
    assert len(runs) == 4 * 2 * 6 * 3 * 2 * 4  # study A's grid x (finetune, probe) x 4 label qualities
    assert grid.run_dir(runs[-1]) == "viny/simmim-random-200000-i1/probe-noisy-n6000-s2"
    runs = grid.runs(config())
    assert len(grid.by_path(runs, grid.pretrain_dir)) == 3 and len(grid.by_path(runs, grid.intermediate_dir)) == 4
    assert grid.run_dir(runs[0]) == "viny/scratch-i0/finetune-full-n250-s0"
    assert grid.pretrain_dir(runs[-1]) == "viny/simmim-random-200000"
    assert grid.coordinates(runs[-1], "intermediate") == {"backbone": "viny", "objective": "simmim", "data": "random",
                                                         "pretrain": 200000, "intermediate": 1}


def test_a_baseline_is_one_run_whatever_the_objectives_and_data_sets():
    runs = grid.runs(config(pretrain_data=["random", "stratified"], intermediate=[False], seeds=[0],
                            finetune_sizes=[250]))
    assert len(runs) == 1 + 3 * 2  # scratch once; 3 sizes x 2 data sets
    assert [(r.objective, r.data) for r in runs if not r.pretrain] == [("none", "none")]
    assert len({grid.run_dir(r) for r in runs}) == len(runs)  # every run has its own folder
    assert {grid.pretrain_dir(r) for r in runs if r.pretrain} >= {"viny/simmim-stratified-45000"}


def test_grids_without_a_baseline_or_with_the_intermediate_step_only():
    runs = grid.runs(config(pretrain_sizes=[16], intermediate=[True], finetune_sizes=[4], seeds=[0, 1]))
    assert [grid.run_dir(r) for r in runs] == ["viny/simmim-random-16-i1/finetune-full-n4-s0",
                                               "viny/simmim-random-16-i1/finetune-full-n4-s1"]
    assert list(grid.by_path(runs, grid.intermediate_dir)) == ["viny/simmim-random-16"]


def test_a_resnet_baseline_beside_pretrained_vits_skips_what_cannot_run():
    cfg = config(backbones=["viny", "resnet50"], pretrain_sizes=[0, 45000], intermediate=[False],
                 finetune_sizes=[250], seeds=[0])
    runs = grid.runs(cfg)
    assert sorted((r.backbone, r.pretrain) for r in runs) == [("resnet50", 0), ("viny", 0), ("viny", 45000)]
    assert grid.skipped(cfg) == ["grid: no simmim pretraining on resnet50: simmim masks patches, which resnet50 "
                                 "cannot (only ViTs can)"]


def test_backbones_are_read_from_the_model_families_without_importing_them():
    assert {n: f["accepts_mask"] for n, f in grid.backbones().items()} == {
        "viny": True, "vit_tiny": True, "vit_small": True, "vit_base": True, "resnet18": False, "resnet50": False}
    assert all(f["dense_features"] for f in grid.backbones().values())
    from sslseg.models import BACKBONES

    assert set(grid.backbones()) == set(BACKBONES)  # the parsed registry is the real one
    with pytest.raises(UserError, match="grid.backbones: unknown backbone 'vit_huge'"):
        config(backbones=["vit_huge"])


def test_a_new_objective_needs_its_settings_entry():
    cfg = load_config(ROOT / "config.yaml")
    del cfg["objectives"]["simmim"]
    with pytest.raises(UserError, match=r"objectives.simmim: missing"):
        grid.check(cfg)


def test_figures_and_tables_keep_backbones_apart(tmp_path):
    from sslseg.report.figures import delta_figure, miou_figure
    from sslseg.report.tables import delta, line_labels, summarise

    rows = []
    for backbone, base in (("viny", 0.5), ("resnet50", 0.3)):
        for pretrain, inter, seed in ((0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)):
            rows.append(dict(backbone=backbone, objective="none", data="none", pretrain=pretrain,
                             intermediate=inter, adaptation="finetune", labels="full", finetune=250, seed=seed,
                             miou=base + 0.01 * seed - 0.02 * inter, pixel_acc=0.8))
    runs = pd.DataFrame(rows)
    assert sorted(set(line_labels(runs))) == ["resnet50 none", "viny none"]
    assert len(summarise(runs)) == 4 and len(delta(runs)) == 2  # cells per backbone, never averaged together
    assert sorted(delta(runs).backbone) == ["resnet50", "viny"]
    runs.to_csv(tmp_path / "runs.csv", index=False)
    miou_figure(str(tmp_path / "runs.csv"), str(tmp_path / "m.png"), {"style": "whitegrid", "dpi": 50})
    delta_figure(str(tmp_path / "runs.csv"), str(tmp_path / "d.png"), {"style": "whitegrid", "dpi": 50})
    assert (tmp_path / "m.png").stat().st_size > 1000 and (tmp_path / "d.png").stat().st_size > 1000
