"""Faults: a stage SIGKILLed mid-run resumes from its checkpoint, and no half artifact is trusted.

The workflow tests kill real Snakemake runs (the whole process group, as SLURM's
time limit or an OOM kill does) and rerun them the way a user would after a hard
kill: `--unlock`, then `--rerun-incomplete`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import psutil
import pytest
import torch
import yaml
from PIL import Image

from conftest import copy_workflow, planned_jobs, snakemake
from sslseg.io import atomic_path
from sslseg.models.checkpoint import read_checkpoint

NAME = "fault"
EPOCHS, EVERY, IMAGES = 16, 2, 48  # ~0.3 s an epoch on CPU: a kill window of seconds
PRETRAIN = f"results/{NAME}/pretrain/viny/simmim-random-{IMAGES}"
TARGET = f"{PRETRAIN}/model.pt"
CONFIG = ["--configfile", "fault.yaml"]


def _write_config(wf: Path, size: int = IMAGES, **data) -> None:
    """tiny.yaml with one long pretraining stage of `size` images (and only it in the grid)."""
    cfg = yaml.safe_load((wf / "workflow/configs/tiny.yaml").read_text())
    cfg["name"] = NAME
    cfg["data"]["demo"]["pretrain"] = IMAGES
    cfg["data"].update(data)
    cfg["grid"] = {"pretrain_sizes": [size], "intermediate": [False], "finetune_sizes": [4], "seeds": [0],
                   "adaptations": ["finetune"], "labels": ["full"]}
    cfg["pretrain"].update(epochs=EPOCHS, milestones=[EPOCHS // 2])
    cfg["runtime"]["checkpoint_every"] = EVERY
    (wf / "fault.yaml").write_text(yaml.safe_dump(cfg))


def _start(wf: Path, *args: str) -> subprocess.Popen:
    """`snakemake --cores 1 ARGS` in its own process group (output to files: no pipe to fill)."""
    env = dict(os.environ)
    out = open(wf / "killed_run.txt", "w")
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", *args, *CONFIG], cwd=wf, env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    return proc


def _wait_for(proc: subprocess.Popen, wf: Path, condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"snakemake ended (rc {proc.returncode}) before {what}:\n"
                                 + (wf / "killed_run.txt").read_text()[-3000:])
        if time.monotonic() > deadline:
            _kill(proc)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL snakemake and every process under it at once: nothing gets to clean up."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    os.killpg(proc.pid, signal.SIGKILL)
    for child in children:  # in case one had left the process group
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    psutil.wait_procs(children, timeout=30)


def _log_epochs(path: Path) -> int:
    try:
        return max(0, len(path.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def _dry_run(wf: Path, *args: str) -> subprocess.CompletedProcess:
    return snakemake(wf, "-n", "--cores", "1", *args, *CONFIG, check=False)


@pytest.fixture(scope="module")
def killed_pretrain(tmp_path_factory) -> dict:
    """A real run of the pretrain stage, SIGKILLed mid-training after at least one checkpoint.

    Returns the workflow copy, the epochs logged and the checkpointed epoch at the kill, and
    what `snakemake -n` said right after it (before any unlock or rerun).
    """
    wf = copy_workflow(tmp_path_factory.mktemp("killed"))
    _write_config(wf)
    out = wf / PRETRAIN
    resume, log = out / ".model.pt.resume", out / "log.csv"
    proc = _start(wf, TARGET)
    # Kill once a checkpoint exists and at least one more epoch has run after it (EVERY + 1
    # logged epochs: the checkpoint of epoch EVERY is written right after its log row).
    _wait_for(proc, wf, lambda: resume.exists() and _log_epochs(log) >= EVERY + 1,
              "a checkpoint and one more epoch")
    _kill(proc)
    logged = _log_epochs(log)
    assert logged < EPOCHS, f"the stage finished ({logged} epochs) before the kill; make it longer"
    state = torch.load(resume, map_location="cpu", weights_only=False)
    # What the stage left, recorded now: the resume test below reruns in this same copy.
    left = sorted(p.name for p in out.iterdir())
    return {"wf": wf, "logged": logged, "resume_epoch": state["epoch"], "left": left,
            "dry_run": _dry_run(wf, TARGET), "dry_run_ignoring_incomplete": _dry_run(wf, TARGET, "--ignore-incomplete")}


@pytest.mark.slow
def test_killed_training_leaves_no_model_and_is_not_trusted(killed_pretrain):
    """Right after a SIGKILL mid-training, nothing claims the stage is done.

    Two layers, each checked on its own. (a) Snakemake's incomplete-job tracking: log.csv, a
    declared output rewritten every epoch, exists at the kill, and a plain `snakemake -n` (no
    --rerun-incomplete) refuses to trust it; this fails if the job's incomplete marker is lost
    or ignored. (b) With that tracking off (`--ignore-incomplete`, as if `.snakemake/` were
    lost) the job is still planned, because the stage writes nothing under model.pt's name
    until training is done (its checkpoints go to the hidden `.model.pt.resume`); a stage that
    saved its periodic checkpoints to model.pt would fail here. The kill during the final write
    itself is covered by the pack test below.
    """
    # No model, no sidecar; the partial log.csv (a declared output) and the hidden checkpoint
    # (and, had the kill hit a checkpoint save, that save's hidden temp file).
    assert [n for n in killed_pretrain["left"] if not n.endswith(".tmp")] == [".model.pt.resume", "log.csv"]
    dry = killed_pretrain["dry_run"]
    text = dry.stdout + dry.stderr
    assert dry.returncode != 0 and "incomplete" in text.lower() and "log.csv" in text, text[-3000:]
    lax = killed_pretrain["dry_run_ignoring_incomplete"]
    assert lax.returncode == 0, lax.stdout[-3000:] + lax.stderr[-3000:]
    assert "pretrain" in lax.stdout.split("Job stats:")[-1], lax.stdout[-3000:]


@pytest.mark.slow
def test_killed_training_resumes_to_the_uninterrupted_weights(killed_pretrain, tmp_path):
    """The rerun resumes from the last checkpoint and ends bitwise equal to a run never killed.

    Without the feature it fails: with no resumable checkpoint (or one Snakemake deletes as
    an output) the log has no "resuming from"; without per-(seed, epoch) seeding and the saved
    optimizer/scheduler state, the resumed weights and losses differ from the uninterrupted run.
    """
    wf = killed_pretrain["wf"]
    resume_epoch = killed_pretrain["resume_epoch"]
    assert 0 < resume_epoch <= killed_pretrain["logged"] < EPOCHS
    snakemake(wf, "--unlock", TARGET, *CONFIG)
    snakemake(wf, "--cores", "1", "--rerun-incomplete", TARGET, *CONFIG)
    stage_log = (wf / f"results/{NAME}/logs/pretrain/viny/simmim-random-{IMAGES}.log").read_text()
    assert f"resuming from {PRETRAIN}/.model.pt.resume at epoch {resume_epoch}" in stage_log, stage_log[-2000:]
    assert not (wf / PRETRAIN / ".model.pt.resume").exists()  # removed once the stage is done

    ref = copy_workflow(tmp_path / "uninterrupted")
    _write_config(ref)
    snakemake(ref, "--cores", "1", TARGET, *CONFIG)
    assert "resuming" not in (ref / f"results/{NAME}/logs/pretrain/viny/simmim-random-{IMAGES}.log").read_text()

    a, b = read_checkpoint(wf / TARGET)["model"], read_checkpoint(ref / TARGET)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    resumed, full = pd.read_csv(wf / PRETRAIN / "log.csv"), pd.read_csv(ref / PRETRAIN / "log.csv")
    assert resumed.epoch.tolist() == list(range(1, EPOCHS + 1))  # every epoch once, none repeated
    assert resumed.loss.tolist() == full.loss.tolist() and resumed.lr.tolist() == full.lr.tolist()
    assert planned_jobs(wf, TARGET, *CONFIG) == {}  # and the resumed result is trusted


def _big_images(root: Path, n: int) -> None:
    """n hard links to one 2000 px JPEG: seconds to decode, nothing to generate or store."""
    xx, yy = np.meshgrid(np.arange(2000).astype(np.uint8), np.arange(2000).astype(np.uint8))  # wraps at 256
    pixels = np.stack([xx, yy, xx + yy], -1) + np.random.default_rng(0).integers(0, 20, (2000, 2000, 3), np.uint8)
    (root / "n0").mkdir(parents=True)
    first = root / "n0" / "img_0000.JPEG"
    Image.fromarray(pixels).save(first, quality=85)
    for i in range(1, n):
        os.link(first, root / "n0" / f"img_{i:04d}.JPEG")


@pytest.mark.slow
def test_pack_killed_while_writing_is_redone_not_trusted(tmp_path):
    """SIGKILL while the pack stage writes its HDF5: only the temp file exists, and a rerun redoes it.

    Without atomic writes the killed job leaves a half `pretrain.h5` under its final name:
    the check with Snakemake's incomplete tracking off (`--ignore-incomplete`) would then see
    the output present and plan nothing, and any reader would get a truncated pack.
    """
    n = 160
    _big_images(tmp_path / "folder", n)
    wf = copy_workflow(tmp_path / "wf")
    _write_config(wf, n, pretrain={"source": "folder", "root": str(tmp_path / "folder"), "pack_size": 36})
    data = wf / f"results/{NAME}/data"
    target = f"results/{NAME}/data/pretrain-random.h5"
    proc = _start(wf, target)

    def temps() -> list[Path]:
        return list(data.glob(".pretrain-random.h5.*.tmp")) if data.is_dir() else []

    # Packing has begun once its output file is open (under either name: this wait must not
    # depend on the feature under test); its sidecar is written only once the pack is done.
    _wait_for(proc, wf, lambda: bool(temps()) or (data / "pretrain-random.h5").exists(), "the pack's output file")
    time.sleep(0.3)  # the file is open and being written; decoding the rest takes seconds more
    assert proc.poll() is None and not (data / "pretrain-random.h5.json").exists(), "packing ended before the kill"
    _kill(proc)

    assert not (data / "pretrain-random.h5").exists() and not (data / "pretrain-random.h5.json").exists()
    assert temps()  # the half file is there, under a name no rule declares
    lax = _dry_run(wf, target, "--ignore-incomplete")
    assert lax.returncode == 0 and "pack_pretrain" in lax.stdout.split("Job stats:")[-1], lax.stdout[-3000:]

    snakemake(wf, "--unlock", target, *CONFIG)
    assert planned_jobs(wf, target, *CONFIG) == {"pack_pretrain": 1}
    proc = snakemake(wf, "--cores", "1", "--rerun-incomplete", target, *CONFIG)
    assert "rule pack_pretrain:" in proc.stdout + proc.stderr
    with h5py.File(data / "pretrain-random.h5", "r") as f:
        assert f["images"].shape == (n, 36, 36, 3) and len(f["names"]) == n
        assert f["images"][n - 1].any()  # the last rows were written too
    assert planned_jobs(wf, target, *CONFIG) == {}


def test_atomic_path_leaves_nothing_behind_on_failure(tmp_path):
    """An exception inside the block keeps the old artifact and removes the temp file.

    Without it an interrupted writer leaves a half file under the final name (or a stray
    temp file beside it).
    """
    target = tmp_path / "out" / "artifact.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp.name != target.name and tmp.exists()
            tmp.write_bytes(b"half")
            raise RuntimeError("killed while writing")
    assert list(target.parent.iterdir()) == []  # neither the target nor a temp file

    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new, half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and list(target.parent.iterdir()) == [target]

    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and list(target.parent.iterdir()) == [target]


def test_a_new_write_removes_the_temp_file_a_killed_writer_left(tmp_path):
    """SIGKILL gives the writer no chance to clean up; the next write of the same target
    deletes the stale temp (real packs are gigabytes). Without it they pile up."""
    target = tmp_path / "pack.h5"
    stale = tmp_path / ".pack.h5.abc123.tmp"
    stale.write_bytes(b"x" * 1000)
    other = tmp_path / ".other.h5.abc123.tmp"  # another target's temp is not ours to delete
    other.write_bytes(b"y")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert not stale.exists() and other.exists() and target.read_bytes() == b"new"
