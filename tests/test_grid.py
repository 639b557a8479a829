"""The grid: axes → runs → paths, for grids beyond study A's (several backbones, data sets,
no baseline, intermediate only, a ResNet), and the figures and tables that read it."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import ROOT
from sslseg import grid
from sslseg.config import load_config, merge, validate
from sslseg.io import UserError
from sslseg.sizes import resolve_size


def config(over: dict | None = None, **grid_over) -> dict:
    """The default config with study A's backbone, objective and two downstream axes (fine-tune,
    full labels) unless given, and batches small enough for the tiny sizes some tests use (the
    run list ignores them); `over`: more config keys."""
    cfg = load_config(ROOT / "config.yaml")
    small = {stage: {"batch_size": 4} for stage in ("pretrain", "finetune", "probe")}
    study_a = {"backbones": ["viny"], "objectives": ["simmim"], "adaptations": ["finetune"], "labels": ["full"]}
    return validate(merge(merge(cfg, small), {**(over or {}), "grid": {**study_a, **grid_over}}))


def test_default_grid_holds_every_objective_and_the_resnet_baseline():
    runs = grid.runs(load_config(ROOT / "config.yaml"))
    # ViNy: scratch + (simmim, mae, dep, ddep) x 3 sizes; ResNet-50: scratch + dep x 3 sizes;
    # each x intermediate x (finetune, probe) x 4 label qualities x 6 sizes x 3 seeds
    assert len(runs) == (13 + 4) * 2 * 2 * 4 * 6 * 3
    assert {r.objective for r in runs} == {"none", "simmim", "mae", "dep", "ddep"}
    assert {r.objective for r in runs if r.backbone == "resnet50"} == {"none", "dep"}
    assert grid.run_dir(runs[-1]) == "resnet50/dep-random-200000-i1/probe-noisy-n6000-s2"
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


def test_decoder_widths_are_an_axis_only_where_a_decoder_exists():
    cfg = config(objectives=["simmim", "dep"], pretrain_sizes=[0, 16], intermediate=[False], finetune_sizes=[4],
                 seeds=[0], decoder_widths=[1, 2])
    dirs = sorted(grid.run_dir(r) for r in grid.runs(cfg))
    # pixel head: only dep's decoder has a width; simmim and scratch runs appear once (width 1)
    assert dirs == ["viny/dep-random-16-i0/finetune-full-n4-s0", "viny/dep-random-16-w2-i0/finetune-full-n4-s0-w2",
                    "viny/scratch-i0/finetune-full-n4-s0", "viny/simmim-random-16-i0/finetune-full-n4-s0"]
    unet = config({"finetune": {"head": "unet"}}, objectives=["simmim", "dep"], pretrain_sizes=[0, 16],
                  intermediate=[False], finetune_sizes=[4], seeds=[0], decoder_widths=[1, 2])
    runs = grid.runs(unet)
    assert len(runs) == 3 * 2  # with a UNet head every init has both widths
    # simmim pretrains no decoder: one pretraining serves both widths; dep pretrains one per width
    assert sorted(grid.by_path(runs, grid.pretrain_dir)) == ["viny/dep-random-16", "viny/dep-random-16-w2",
                                                             "viny/simmim-random-16"]


def test_stage_settings_carry_the_decoder_only_where_it_shapes_the_model():
    from sslseg.config import stage_settings

    unet = config({"finetune": {"head": "unet"}}, objectives=["simmim", "dep"], pretrain_sizes=[16],
                  intermediate=[False], finetune_sizes=[4], seeds=[0], decoder_widths=[2])
    simmim, dep = sorted(grid.runs(unet), key=lambda r: r.objective != "simmim")
    assert "decoder_width" not in stage_settings(unet, "pretrain", simmim)["model"]
    assert stage_settings(unet, "pretrain", dep)["model"]["decoder_width"] == 2
    assert stage_settings(unet, "finetune", simmim)["model"]["decoder_channels"] == [1024, 512, 256, 128, 64]
    # dep's own recipe (seed 004: Adam, cosine, 6e-5) over the shared pretrain: section
    s = stage_settings(unet, "pretrain", dep)
    assert (s["optimizer"], s["schedule"], s["lr"], s["epochs"]) == ("adam", "cosine", 6e-5, 100)
    assert stage_settings(unet, "pretrain", simmim)["optimizer"] == "adamw"


def test_ddep_starts_from_its_encoder_objective_and_freezes_it():
    from sslseg.config import stage_settings

    cfg = config(backbones=["viny", "resnet18"], objectives=["simmim", "ddep"], pretrain_sizes=[16],
                 intermediate=[False], finetune_sizes=[4], seeds=[0])
    runs = grid.runs(cfg)
    assert sorted(grid.pretrain_dir(r) for r in runs) == ["viny/ddep-random-16", "viny/simmim-random-16"]
    assert ("grid: no ddep pretraining on resnet18: its encoder comes from simmim, which cannot pretrain "
            "resnet18") in grid.skipped(cfg)
    ddep = next(r for r in runs if r.objective == "ddep")
    assert grid.encoder_objective(cfg, "ddep") == "simmim"
    assert stage_settings(cfg, "pretrain", ddep)["freeze"] == ["backbone."]
    assert grid.encoder_objective(config({"objectives": {"ddep": {"encoder": "x/model.pt"}}}), "ddep") is None


def test_label_budgets_as_fractions_of_the_pool():
    cfg = config(pretrain_sizes=[0], intermediate=[False], finetune_sizes=["1%", 250, "100%"], seeds=[0])
    assert [grid.run_dir(r).split("/")[-1] for r in grid.runs(cfg)] == [
        "finetune-full-n1pct-s0", "finetune-full-n250-s0", "finetune-full-n100pct-s0"]
    assert [resolve_size(v, 5144) for v in ("1%", "0.5%", 250, "100%", "5pct")] == [51, 26, 250, 5144, 257]
    assert resolve_size("1%", 20) == 1  # never an empty subset


def test_named_recipes_override_the_finetune_section():
    from sslseg.config import stage_settings

    cfg = config({"finetune": {"recipe": "adam_cosine", "epochs": 50}}, pretrain_sizes=[0], intermediate=[False],
                 finetune_sizes=[4], seeds=[0])
    s = stage_settings(cfg, "finetune", grid.runs(cfg)[0])
    assert (s["optimizer"], s["schedule"], s["lr"], s["epochs"]) == ("adam", "cosine", 1e-4, 50)
    assert s["augment"]["scale"] == [0.08, 1.0] and "recipe" not in s
    base = config(pretrain_sizes=[0], intermediate=[False], finetune_sizes=[4], seeds=[0])
    a = stage_settings(base, "finetune", grid.runs(base)[0])
    b = stage_settings(config({"finetune": {"recipe": "adamw_multistep"}}, pretrain_sizes=[0], intermediate=[False],
                              finetune_sizes=[4], seeds=[0]), "finetune", grid.runs(base)[0])
    assert a == b  # study A's recipe is the finetune: section's defaults


def test_a_decoder_pretraining_pairs_with_the_headless_baseline_at_every_width():
    from sslseg.report.tables import pretrain_delta

    rows = [dict(backbone="viny", objective="none", data="none", pretrain=0, intermediate=0, adaptation="finetune",
                 labels="full", finetune=4, decoder=1, seed=s, miou=0.30) for s in (0, 1)]
    rows += [dict(rows[0], objective="dep", data="random", pretrain=16, decoder=w, seed=s, miou=0.30 + 0.01 * w)
             for w in (1, 2) for s in (0, 1)]
    d = pretrain_delta(pd.DataFrame(rows)).set_index("decoder")
    assert d.delta_mean.round(6).to_dict() == {1: 1.0, 2: 2.0}  # width 2 is not dropped for want of a baseline


def test_ddep_with_a_head_that_drops_its_decoder_is_named_a_repeat():
    cfg = config(objectives=["simmim", "ddep"], pretrain_sizes=[16], intermediate=[False], finetune_sizes=[4],
                 seeds=[0])
    assert grid.skipped(cfg) == ["grid: ddep's finetune runs drop its decoder (finetune.head is not unet), so they "
                                 "repeat simmim's, whose frozen encoder they share; set finetune.head unet to compare "
                                 "decoders"]
    unet = config({"finetune": {"head": "unet"}}, objectives=["simmim", "ddep"], pretrain_sizes=[16],
                  intermediate=[False], finetune_sizes=[4], seeds=[0])
    assert grid.skipped(unet) == []
