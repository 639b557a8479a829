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
    # 4 pretraining sizes (0, 45k, 100k, 200k) x with/without intermediate x 6 sizes x 3 seeds
    assert jobs["finetune"] == 4 * 2 * 6 * 3 == jobs["evaluate"]
    assert jobs["pretrain"] == 3 and jobs["intermediate"] == 4 and jobs["subset"] == 6 * 3


def test_tiny_run_writes_every_artifact(tiny_run):
    out = tiny_run / "results" / "tiny"
    runs = pd.read_csv(out / "report" / "runs.csv")
    assert len(runs) == 2 * 2 * 2 * 2  # pretrain sizes x intermediate x finetune sizes x seeds
    assert runs.miou.between(0, 1).all() and runs.pixel_acc.between(0, 1).all()
    assert set(runs.columns) >= {"iou_pet", "iou_background", "iou_border", "fg_iou", "git_commit", "source"}
    for name in ("table1", "table_a2", "table_a3"):
        assert "±" in (out / "report" / "tables" / "study" / f"{name}.md").read_text()
    for fig in ("fig_miou", "fig_delta", "reconstructions", "segmentations"):
        assert (out / "report" / f"{fig}.png").stat().st_size > 1000
        assert (out / "report" / f"{fig}.pdf").exists()
    meta = json.loads((out / "pretrain" / "p16" / "model.pt.json").read_text())
    assert meta["settings"]["mask_ratio"] == 0.5 and meta["torch"] and meta["wall_time_s"] > 0
    assert meta["device"] == "cpu" and "git_commit" in meta
    ft = json.loads((out / "finetune" / "p16_i0" / "n8_s1" / "model.pt.json").read_text())
    assert ft["init"].endswith("pretrain/p16/model.pt") and ft["dropped_keys"] == ["head.proj.bias", "head.proj.weight", "mask_token"]
    assert not list(out.rglob("*.tmp"))


def test_unchanged_rerun_does_nothing(tiny_run):
    assert planned_jobs(tiny_run, *TINY) == {}


def _with_change(wf, section, key, value):
    cfg = yaml.safe_load((wf / "workflow/configs/tiny.yaml").read_text())
    cfg.setdefault(section, {})[key] = value
    (wf / "changed.yaml").write_text(yaml.safe_dump(cfg))
    return ["--configfile", "changed.yaml"]


def test_figure_only_change_reruns_only_the_figure_rule(tiny_run):
    jobs = planned_jobs(tiny_run, *_with_change(tiny_run, "report", "style", "ticks"))
    assert jobs == {"figures": 1, "all": 1}


def test_finetune_change_reruns_finetunes_evaluations_and_figures_not_pretraining(tiny_run):
    jobs = planned_jobs(tiny_run, *_with_change(tiny_run, "finetune", "lr", 1e-3))
    assert jobs["finetune"] == 16 and jobs["evaluate"] == 16
    assert {"aggregate", "tables", "figures", "segmentations"} <= set(jobs)
    assert not {"pretrain", "intermediate", "pack_pets", "pack_pretrain", "reconstructions"} & set(jobs)


def test_code_change_to_one_stage_reruns_that_stage_and_descendants(tiny_run):
    # A real edit: Snakemake ignores a newer mtime when the content's checksum is unchanged.
    src = tiny_run / "sslseg" / "objectives" / "simmim.py"
    original = src.read_text()
    src.write_text(original + "\n# a code change\n")
    later = time.time() + 5
    os.utime(src, (later, later))
    try:
        jobs = planned_jobs(tiny_run, *TINY)
    finally:
        src.write_text(original)
    assert jobs["pretrain"] == 1 and jobs["reconstructions"] == 1
    assert jobs["finetune"] == 8  # the 8 fine-tunes from p16 (with and without intermediate)
    assert "pack_pets" not in jobs and "subset" not in jobs


def test_report_builds(tiny_run):
    snakemake(tiny_run, *TINY, "--report", "report.html")
    html = (tiny_run / "report.html").read_text(errors="ignore")
    assert "fig_miou.png" in html and "mIoU against the number of labelled" in html
