"""The workflow end to end on the tiny config, and what a change to one stage reruns."""

from __future__ import annotations

import json
import os
import time

import pandas as pd
import pytest
import yaml

from conftest import ROOT, TINY, planned_jobs, snakemake

pytestmark = pytest.mark.slow


def test_lint_is_clean():
    for args in ([], TINY):
        proc = snakemake(ROOT, "--lint", *args, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_default_config_plans_the_seeds_full_grid():
    jobs = planned_jobs(ROOT)
    # inits: ViNy from scratch or pretrained by each of simmim, mae, dep, ddep at 3 sizes (45k,
    # 100k, 200k); the ResNet-50 baseline from scratch or by dep (the masking objectives, and
    # ddep whose encoder is simmim's, cannot pretrain a ResNet): 13 + 4 = 17. Each with/without
    # intermediate x 6 sizes x 3 seeds x 4 label qualities, fine-tuned and again probed
    inits = (1 + 4 * 3) + (1 + 3)
    assert jobs["finetune"] == inits * 2 * 6 * 3 * 4 == jobs["probe"] == jobs["evaluate"] // 2
    assert jobs["weak_labels"] == 3 * 3  # scribbles, points, noisy x seeds: one cached set each
    assert jobs["pretrain"] == 4 * 3 + 3 and jobs["intermediate"] == inits and jobs["subset"] == 6 * 3


def test_tiny_run_writes_every_artifact(tiny_run):
    out = tiny_run / "results" / "tiny"
    runs = pd.read_csv(out / "report" / "runs.csv")
    assert len(runs) == 2 * 2 * 2 * 2  # pretrain sizes x intermediate x finetune sizes x seeds
    assert runs.miou.between(0, 1).all() and runs.pixel_acc.between(0, 1).all()
    assert set(runs.columns) >= {"iou_pet", "iou_background", "iou_border", "fg_iou", "git_commit", "source"}
    for name in ("table1", "table_a2", "table_a3"):
        assert "±" in (out / "report" / "tables" / "study" / f"{name}.md").read_text()
    for fig in ("fig_miou", "fig_delta", "reconstructions_simmim", "segmentations"):  # reconstructions: per objective
        assert (out / "report" / f"{fig}.png").stat().st_size > 1000
        assert (out / "report" / f"{fig}.pdf").exists()
    meta = json.loads((out / "pretrain" / "viny" / "simmim-random-16" / "model.pt.json").read_text())
    assert meta["settings"]["mask_ratio"] == 0.5 and meta["torch"] and meta["wall_time_s"] > 0
    assert meta["device"] == "cpu" and "git_commit" in meta
    run = out / "runs" / "viny" / "simmim-random-16-i0" / "finetune-full-n8-s1"
    ft = json.loads((run / "model.pt.json").read_text())
    assert ft["init"].endswith("pretrain/viny/simmim-random-16/model.pt")
    assert ft["dropped_keys"] == ["head.proj.bias", "head.proj.weight", "mask_token"]
    assert not list(out.rglob("*.tmp"))
    # learning curves: a row per training job (1 pretraining, 2 intermediate steps, 16 fine-tunes), a figure per stage
    conv = pd.read_csv(out / "report" / "convergence.csv")
    assert conv.stage.value_counts().to_dict() == {"pretrain": 1, "intermediate": 2, "finetune": 16}
    assert (conv.epochs == conv.stage.map({"pretrain": 2, "intermediate": 1, "finetune": 2})).all()
    assert conv[conv.epochs > 1].last_10pct_change.notna().all()
    for stage in ("pretrain", "intermediate", "finetune"):
        assert (out / "report" / f"fig_curves_{stage}.png").stat().st_size > 1000


def test_artifacts_are_readable_by_others_as_the_umask_says(tiny_run):
    """Run under umask 022, every artifact is rw-r--r-- like any new file, not the private 0600 of
    a temp file renamed into place: collaborators on a shared project can read the results."""
    out = tiny_run / "results" / "tiny"
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    kinds = {p.rsplit(".", 1)[-1] for p in modes}
    assert kinds >= {"h5", "pt", "json", "csv", "md", "txt", "png", "pdf", "log", "tsv"}, kinds
    private = {p: oct(m) for p, m in modes.items() if m != 0o644}
    assert not private


def test_every_result_names_its_grid_coordinates(tiny_run):
    """metrics.json says which run it is; runs.csv's axis columns are read from there, not from paths."""
    from sslseg.grid import NAMES

    out = tiny_run / "results" / "tiny"
    metrics = json.loads((out / "runs/viny/simmim-random-16-i1/finetune-full-n4-s0/metrics.json").read_text())
    assert metrics["run"] == {"backbone": "viny", "objective": "simmim", "data": "random", "pretrain": 16,
                              "intermediate": 1, "adaptation": "finetune", "labels": "full", "finetune": 4, "seed": 0,
                              "decoder": 1}  # the UNet width axis: 1 for a run without a decoder
    scratch = json.loads((out / "runs/viny/scratch-i0/finetune-full-n8-s1/metrics.json").read_text())["run"]
    assert (scratch["objective"], scratch["data"], scratch["pretrain"]) == ("none", "none", 0)
    runs = pd.read_csv(out / "report" / "runs.csv")
    assert set(NAMES) <= set(runs.columns)
    assert len(runs.drop_duplicates(list(NAMES))) == len(runs) == 16
    acc = pd.read_csv(out / "report" / "intermediate.csv")
    assert sorted(acc.pretrain) == [0, 16] and "seed" not in acc and acc.accuracy.between(0, 1).all()


def test_unchanged_rerun_does_nothing(tiny_run):
    assert planned_jobs(tiny_run, *TINY) == {}


def _with_change(wf, section, key, value):
    cfg = yaml.safe_load((wf / "workflow/configs/tiny.yaml").read_text())
    cfg.setdefault(section, {})[key] = value
    (wf / "changed.yaml").write_text(yaml.safe_dump(cfg))
    return ["--configfile", "changed.yaml"]


def test_figure_only_change_reruns_only_the_figure_rule(tiny_run):
    jobs = planned_jobs(tiny_run, *_with_change(tiny_run, "report", "style", "ticks"))
    assert jobs == {"figures": 1, "learning_curves": 1, "all": 1}  # the two that draw with the style


def test_finetune_change_reruns_finetunes_evaluations_and_report_rules_only(tiny_run):
    jobs = planned_jobs(tiny_run, *_with_change(tiny_run, "finetune", "lr", 1e-3))
    assert jobs == {"finetune": 16, "evaluate": 16, "aggregate": 1, "tables": 1, "figures": 1, "segmentations": 1,
                    "learning_curves": 1, "published": 1, "all": 1}


@pytest.mark.parametrize("section,key,value", [
    ("runtime", "log_every", 7), ("runtime", "checkpoint_every", 3), ("runtime", "memory_gb", 0.001),
    ("runtime", "gpu_memory_gb", 0.001),
    ("runtime", "progress", False), ("resources", "finetune", {"threads": 2, "mem_mb": 1234, "runtime": 99}),
    ("resources", "pretrain", {"gpu": 0}), ("resources", "evaluate", {"threads": 2}),
    ("resources", "pack", {"mem_mb": 2000}), ("resources", "default", {"runtime": 5}),
])
def test_settings_that_cannot_change_a_result_rerun_nothing(tiny_run, section, key, value):
    assert planned_jobs(tiny_run, *_with_change(tiny_run, section, key, value)) == {}


def _jobs_after_editing(wf, module):
    # A real edit: Snakemake ignores a newer mtime when the content's checksum is unchanged.
    src = wf / module
    original = src.read_text()
    src.write_text(original + "\n# a code change\n")
    later = time.time() + 5
    os.utime(src, (later, later))
    try:
        return planned_jobs(wf, *TINY)
    finally:
        src.write_text(original)
        os.utime(src, (later + 1, later + 1))


def test_code_change_to_an_objective_reruns_its_stage_and_descendants_only(tiny_run):
    jobs = _jobs_after_editing(tiny_run, "sslseg/objectives/simmim.py")
    assert jobs["pretrain"] == 1 and jobs["reconstructions"] == 1 and jobs["intermediate"] == 1
    assert jobs["finetune"] == 8  # the 8 fine-tunes from the pretraining (with and without intermediate)
    assert "pack_pets" not in jobs and "subset" not in jobs


def test_code_change_to_an_imported_module_reruns_every_stage_that_imports_it(tiny_run):
    # Nobody listed pack.py by hand: the stages import it (reading packs), so all of them rerun.
    jobs = _jobs_after_editing(tiny_run, "sslseg/data/pack.py")
    assert {k: jobs[k] for k in ("pack_pets", "pack_pretrain", "pack_intermediate", "pretrain", "finetune",
                                 "evaluate")} == {"pack_pets": 1, "pack_pretrain": 1, "pack_intermediate": 2,
                                                  "pretrain": 1, "finetune": 16, "evaluate": 16}
    assert "demo_data" not in jobs  # the demo generator does not import the packer
    # A module only the report imports reruns the report rules (the example figures' module
    # imports it too) and nothing upstream.
    assert set(_jobs_after_editing(tiny_run, "sslseg/report/tables.py")) == {
        "aggregate", "intermediate_accuracies", "tables", "figures", "reconstructions", "segmentations",
        "learning_curves", "published", "all"}
    # The grid and config code is the workflow's, not a stage's: editing it retrains nothing.
    assert set(_jobs_after_editing(tiny_run, "sslseg/grid.py")) <= {
        "aggregate", "intermediate_accuracies", "tables", "figures", "reconstructions", "segmentations",
        "learning_curves", "published", "all"}
    assert _jobs_after_editing(tiny_run, "sslseg/config.py") == {}


def test_report_builds(tiny_run):
    snakemake(tiny_run, *TINY, "--report", "report.html")
    html = (tiny_run / "report.html").read_text(errors="ignore")
    assert "fig_miou.png" in html and "mIoU against the number of labelled" in html


def test_evaluate_folder_reads_the_model_from_the_checkpoint(tiny_run):
    """Any fine-tune scored on any Oxford-layout folder: no model settings to repeat; a pretraining
    checkpoint is refused with one line."""
    import subprocess
    import sys

    run = "results/tiny/runs/viny/simmim-random-16-i0/finetune-full-n8-s0"
    # the default config (128 px): the tiny checkpoint's own settings (32 px) must win
    args = [sys.executable, "-m", "sslseg", "evaluate_folder", "--root", "results/tiny/demo", "--config", "config.yaml"]
    proc = subprocess.run([*args, "--ckpt", f"{run}/model.pt", "--out", "scores.json"], cwd=tiny_run,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{run}/model.pt: finetune checkpoint, viny at 32 px" in proc.stderr
    scores = json.loads((tiny_run / "scores.json").read_text())
    assert scores["images"] == 24 and 0 <= scores["miou"] <= 1 and scores["model"]["image_size"] == 32
    # an output it cannot write is found before any work (no checkpoint read, no image decoded)
    unwritable = subprocess.run([*args, "--ckpt", f"{run}/model.pt", "--out", "scores.json/again.json"],
                                cwd=tiny_run, capture_output=True, text=True, timeout=300)
    assert unwritable.returncode == 2 and unwritable.stderr.strip().splitlines() == [
        "sslseg evaluate_folder: error: scores.json/again.json: cannot write here, scores.json is a file, not a "
        "folder; choose another output path"]
    bad = subprocess.run([*args, "--ckpt", "results/tiny/pretrain/viny/simmim-random-16/model.pt"], cwd=tiny_run,
                         capture_output=True, text=True, timeout=300)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and "written by the 'pretrain' stage" in lines[0]
    assert "it has no trained head); this needs a finetune or probe checkpoint (runs/.../model.pt)" in lines[0]


TINY_B = """grid: {pretrain_sizes: [16], intermediate: [false], adaptations: [finetune, probe],
       labels: [full, scribbles, noisy], finetune_sizes: [8], seeds: [0, 1]}
probe: {iterations: 4, batch_size: 4}
labels: {noisy: {strength: 4}}
"""


@pytest.fixture(scope="module")
def tiny_b_run(tmp_path_factory):
    """Study B's axes on the tiny data: frozen probes and fine-tunes on full, scribbled and noisy labels."""
    from conftest import copy_workflow

    wf = copy_workflow(tmp_path_factory.mktemp("wfb"))
    (wf / "b.yaml").write_text(TINY_B)
    snakemake(wf, "--cores", "2", TINY[0], TINY[1], "b.yaml")
    return wf


def test_probes_and_imperfect_labels_run_as_axes_of_the_grid(tiny_b_run):
    import torch

    out = tiny_b_run / "results" / "tiny"
    runs = pd.read_csv(out / "report" / "runs.csv")
    assert len(runs) == 2 * 3 * 2 and set(runs.adaptation) == {"finetune", "probe"}
    assert set(runs.labels) == {"full", "scribbles", "noisy"} and runs.miou.between(0, 1).all()
    for kind in ("scribbles", "noisy"):  # each label set: cached per seed, with its measured quality
        for seed in (0, 1):
            q = json.loads((out / "labels" / f"{kind}-s{seed}.quality.json").read_text())
            assert q["kind"] == kind and q["seed"] == seed and 0 < q["miou"] <= 1
    assert json.loads((out / "labels/scribbles-s0.quality.json").read_text())["labelled_fraction"] < 0.5
    assert json.loads((out / "labels/noisy-s0.quality.json").read_text())["labelled_fraction"] == 1.0
    probe = out / "runs/viny/simmim-random-16-i0/probe-scribbles-n8-s1"
    meta = json.loads((probe / "model.pt.json").read_text())
    assert meta["labels"].endswith("labels/scribbles-s1.h5") and meta["settings"]["freeze"] == ["backbone."]
    trained = torch.load(probe / "model.pt", weights_only=True)["model"]
    pretrained = torch.load(out / "pretrain/viny/simmim-random-16/model.pt", weights_only=True)["model"]
    assert all(torch.equal(v, pretrained[k]) for k, v in trained.items() if k.startswith("backbone."))
    assert "s.e." in (out / "report/tables/study/probe_delta.md").read_text()
    quality = pd.read_csv(out / "report/tables/label_quality.csv")
    assert set(quality.kind) == {"scribbles", "noisy"}
    for fig in ("fig_label_quality", "fig_probe_delta", "label_examples", "fig_curves_probe"):
        assert (out / "report" / f"{fig}.png").stat().st_size > 1000

