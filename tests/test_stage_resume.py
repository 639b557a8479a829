"""A training stage's resume file is used only with the inputs it was written from: a fine-tune
stopped part-way, whose pretraining then reran, starts over from the new checkpoint instead of
finishing from the old one (and landing under the new pretraining in every table)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sslseg.config import load_config, stage_settings
from sslseg.data.splits import write_rows
from sslseg.grid import Run
from sslseg.models.checkpoint import read_checkpoint
from sslseg.stages.data import pack_pets
from sslseg.stages.train import finetune, resume_inputs
from test_engine import die_after

ROOT = Path(__file__).resolve().parents[1]
RUN = Run(backbone="viny", objective="simmim", data="random", pretrain=45000, intermediate=False,
          adaptation="finetune", labels="full", finetune=250, seed=0)
RUNTIME = {"log_every": 10, "checkpoint_every": 1, "memory_gb": 1.0, "progress": False}


@pytest.fixture
def stage(pets_sample, tmp_path):
    """A tiny pets pack, 10 rows (3 steps an epoch at batch 4), and the fine-tune's settings."""
    cfg = load_config(ROOT / "config.yaml", ROOT / "workflow/configs/tiny.yaml")
    pack_pets(str(pets_sample), str(tmp_path / "pets.h5"), {"image_size": 32, "download": False, "resize": "crop"})
    write_rows(tmp_path / "rows.txt", np.arange(10))
    settings = {**stage_settings(cfg, "finetune", RUN), "batch_size": 4, "epochs": 3, "iterations": 0,
                "milestones": [], "compile": False, "device": "cpu"}
    settings["model"] = {**settings["model"], "image_size": 32}

    def run(out: str, init: str | None = None, seed: int = 0) -> dict:
        finetune(str(tmp_path / "pets.h5"), str(tmp_path / "rows.txt"), str(tmp_path / out), str(tmp_path / f"{out}.csv"),
                 {**settings, "seed": seed}, RUNTIME, init=None if init is None else str(tmp_path / init))
        return read_checkpoint(tmp_path / out)["model"]

    return run


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_stopped_finetune_starts_over_when_its_pretraining_changed(stage, tmp_path, monkeypatch, capsys):
    stage("pre.pt", seed=0)  # stands for the pretraining checkpoint
    die_after(monkeypatch, torch.optim.AdamW, 2 * 3)  # stopped in epoch 3, after epoch 2's resume file
    with pytest.raises(KeyboardInterrupt):
        stage("ft.pt", init="pre.pt")
    monkeypatch.undo()
    assert (tmp_path / ".ft.pt.resume").exists()
    stage("pre.pt", seed=1)  # the pretraining reran: another checkpoint at the same path
    resumed = stage("ft.pt", init="pre.pt")
    assert "written with other settings, inputs or code" in capsys.readouterr().out
    assert same(resumed, stage("ref.pt", init="pre.pt"))  # as an uninterrupted run from the new checkpoint


def test_a_stopped_finetune_with_unchanged_inputs_resumes(stage, tmp_path, monkeypatch, capsys):
    stage("pre.pt")
    die_after(monkeypatch, torch.optim.AdamW, 2 * 3)
    with pytest.raises(KeyboardInterrupt):
        stage("ft.pt", init="pre.pt")
    monkeypatch.undo()
    resumed = stage("ft.pt", init="pre.pt")
    assert "resuming from" in capsys.readouterr().out
    assert same(resumed, stage("ref.pt", init="pre.pt"))


def test_every_input_is_part_of_the_resume_identity(tmp_path):
    for name in ("pack.h5", "labels.h5", "init.pt"):
        (tmp_path / name).write_bytes(b"x" * 10)
    settings = {"objective": "segment", "model": {"backbone": "viny"}}
    args = (str(tmp_path / "pack.h5"), np.arange(5), str(tmp_path / "labels.h5"), str(tmp_path / "init.pt"))
    base = resume_inputs(settings, *args)
    assert resume_inputs(settings, *args) == base  # a restart with nothing changed matches
    assert resume_inputs(settings, args[0], np.arange(6), *args[2:]) != base
    for name in ("pack.h5", "labels.h5", "init.pt"):
        st = os.stat(tmp_path / name)
        os.utime(tmp_path / name, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # rewritten by a rerun stage
        assert resume_inputs(settings, *args) != base, name
        base = resume_inputs(settings, *args)
    assert resume_inputs({**settings, "objective": "simmim"}, *args)["code"] != base["code"]  # its objective's file
