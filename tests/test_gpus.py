"""sslseg.gpus (one device per job, several small jobs per device) and the resources the
workflow declares for it, without a GPU: a fake device count (SSLSEG_GPU_COUNT) or a user's
CUDA_VISIBLE_DEVICES, and dry runs for the resources."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sslseg import gpus
from test_slurm import PROFILE, REPO, TINY, dry_run, job_resources, snakemake

SHARE_1 = json.dumps({"pretrain": gpus.slots(1), "finetune": gpus.slots(4)})


@pytest.fixture
def fresh(monkeypatch):
    """An empty claim for this process (a real job claims once), released afterwards."""
    held: list[int] = []
    monkeypatch.setattr(gpus, "_held", held)
    yield held
    for fd in held:
        os.close(fd)


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"SSLSEG_GPU_SLOTS": SHARE_1, "SSLSEG_GPU_LOCKS": str(tmp_path / "locks"), **extra}


def release(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def test_slots_of_each_share():
    assert [gpus.slots(s) for s in gpus.SHARES] == [12, 6, 4, 3, 2, 1]
    with pytest.raises(ValueError, match="gpu_share 5"):
        gpus.slots(5)


def test_two_whole_device_jobs_get_different_devices_then_none_is_left(tmp_path):
    locks = str(tmp_path)
    a, fa, _ = gpus.try_acquire(locks, ["0", "1"], gpus.SLOTS)
    b, fb, _ = gpus.try_acquire(locks, ["0", "1"], gpus.SLOTS)
    c, fc, free = gpus.try_acquire(locks, ["0", "1"], gpus.SLOTS)
    assert (a, b, c, fc, free) == ("0", "1", None, [], {"0": 0, "1": 0})
    release(fa)
    assert gpus.try_acquire(locks, ["0", "1"], gpus.SLOTS)[0] == "0"  # freed by closing its descriptors


def test_share_4_packs_four_jobs_on_a_device_before_the_fifth_moves_on(tmp_path):
    locks, need = str(tmp_path), gpus.slots(4)
    placed = [gpus.try_acquire(locks, ["0", "1"], need)[0] for _ in range(5)]
    assert placed == ["0", "0", "0", "0", "1"]
    # best fit: a small job joins the partly used device 1, and a whole-device job still finds one
    assert gpus.try_acquire(locks, ["0", "1", "2"], need)[0] == "1"
    assert gpus.try_acquire(locks, ["0", "1", "2"], gpus.SLOTS)[0] == "2"


def test_claim_sets_the_device_and_hands_children_no_claim(tmp_path, fresh):
    e = env(tmp_path, SSLSEG_GPU_COUNT="2")
    assert gpus.claim("pretrain", e) == "0"
    assert e["CUDA_VISIBLE_DEVICES"] == "0" and "SSLSEG_GPU_SLOTS" not in e and len(fresh) == gpus.SLOTS
    assert gpus.claim("pretrain", e) == "0"  # once per process


def test_a_users_cuda_visible_devices_is_respected(tmp_path, fresh, monkeypatch):
    assert gpus.claim("pretrain", env(tmp_path, CUDA_VISIBLE_DEVICES="2,3", SSLSEG_GPU_COUNT="8")) == "2"
    monkeypatch.setattr(gpus, "_held", [])  # a second job
    e = env(tmp_path, CUDA_VISIBLE_DEVICES="2,3")
    assert gpus.claim("pretrain", e) == "3" and e["CUDA_VISIBLE_DEVICES"] == "3"
    release(gpus._held)
    assert gpus.devices({"CUDA_VISIBLE_DEVICES": "1,-1,2"}) == ["1"]  # CUDA stops at an invalid entry
    assert gpus.devices({"CUDA_VISIBLE_DEVICES": ""}) == []


def test_a_local_run_inside_a_slurm_allocation_claims_among_its_gpus(tmp_path, fresh):
    """salloc --gpus=2, then a local snakemake: SLURM lists the job's GPUs, which the jobs share."""
    e = env(tmp_path, SLURM_JOB_ID="7", CUDA_VISIBLE_DEVICES="4,5")
    assert gpus.claim("pretrain", e) == "4" and e["CUDA_VISIBLE_DEVICES"] == "4" and len(fresh) == gpus.SLOTS


@pytest.mark.parametrize("extra", [
    {"SSLSEG_GPU_COUNT": "0"},                       # no GPU
    {"CUDA_VISIBLE_DEVICES": "-1"},                  # every GPU hidden
])
def test_no_claim_without_gpus(tmp_path, fresh, extra):
    e = env(tmp_path, **extra)
    assert gpus.claim("pretrain", e) is None
    assert e.get("CUDA_VISIBLE_DEVICES") == extra.get("CUDA_VISIBLE_DEVICES") and not fresh
    assert not (tmp_path / "locks").exists()


def test_no_claim_for_a_job_without_a_gpu(tmp_path, fresh):
    assert gpus.claim("aggregate", env(tmp_path, SSLSEG_GPU_COUNT="2")) is None  # not in the table
    assert gpus.claim("finetune", {"SSLSEG_GPU_COUNT": "2"}) is None  # not from the workflow (a run by hand)
    assert not fresh


def test_bad_values_give_one_line_errors(tmp_path, fresh):
    with pytest.raises(SystemExit, match=r"^sslseg: error: SSLSEG_GPU_COUNT='two'"):
        gpus.claim("pretrain", env(tmp_path, SSLSEG_GPU_COUNT="two"))
    with pytest.raises(SystemExit, match=r"^sslseg: error: SSLSEG_GPU_SLOTS="):
        gpus.claim("pretrain", {"SSLSEG_GPU_SLOTS": "[3]", "SSLSEG_GPU_COUNT": "1"})
    with pytest.raises(SystemExit, match=r"^sslseg: error: SSLSEG_GPU_SLOTS: pretrain: 13 is not"):
        gpus.claim("pretrain", {"SSLSEG_GPU_SLOTS": '{"pretrain": 13}', "SSLSEG_GPU_COUNT": "1"})


def test_device_list_from_nvidia_smi(monkeypatch):
    listing = ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)\n"
               "GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-bbbb)\n"
               "  MIG 3g.20gb     Device  0: (UUID: MIG-cccc)\n"
               "  MIG 3g.20gb     Device  1: (UUID: MIG-dddd)\n")
    monkeypatch.setattr(gpus.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, listing, ""))
    assert gpus.devices({}) == ["0", "MIG-cccc", "MIG-dddd"]  # a GPU split by MIG: its instances
    monkeypatch.setattr(gpus.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError()))
    assert gpus.devices({}) == []  # no nvidia-smi: no GPU


# ------------------------------------------------------------------ separate processes, as jobs are

JOB = ("import os, sys; from sslseg import gpus; d = gpus.claim('pretrain');"
       " print(d, os.environ.get('CUDA_VISIBLE_DEVICES'), flush=True); sys.stdin.read()")


def start_job(tmp_path: Path) -> subprocess.Popen:
    e = {**os.environ, **env(tmp_path, SSLSEG_GPU_COUNT="2"), "PYTHONPATH": str(REPO)}
    e.pop("CUDA_VISIBLE_DEVICES", None)
    e.pop("SLURM_JOB_ID", None)
    return subprocess.Popen([sys.executable, "-c", JOB], env=e, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def device_of(job: subprocess.Popen, timeout: float = 30) -> str | None:
    """The device the job printed once it had claimed one; None if it is still waiting."""
    ready, _, _ = select.select([job.stdout], [], [], timeout)
    if not ready:
        return None
    device, visible = job.stdout.readline().split()
    assert device == visible
    return device


def test_jobs_in_separate_processes_get_separate_devices_and_a_killed_job_frees_its_own(tmp_path):
    jobs = []
    try:
        devices = []
        for _ in range(3):  # one after the other, so which waits is known
            jobs.append(start_job(tmp_path))
            devices.append(device_of(jobs[-1], timeout=30 if len(jobs) < 3 else 3))
        first, second, third = devices
        assert (first, second, third) == ("0", "1", None)  # both devices taken: the third waits, and says so
        jobs[0].send_signal(signal.SIGKILL)  # no clean-up runs: the kernel drops its locks
        jobs[0].wait()
        assert device_of(jobs[2]) == first
        jobs[2].stdin.close()
        assert jobs[2].wait(timeout=30) == 0
        assert "sslseg: waiting for a GPU: pretrain needs 12 of a device's 12 slots, free now GPU 0: 0, GPU 1: 0" \
            in jobs[2].stderr.read()
    finally:
        for job in jobs:
            job.kill()
            job.wait()


# ------------------------------------------------------------------------- what the workflow asks for

def test_gpu_rules_ask_for_their_share_of_a_device(tmp_path):
    """tiny.yaml's GPU rules (pretrain, intermediate, finetune; its evaluate has gpu 0): gpu=1 as
    before (sbatch --gpus=1) and gpu_slots = 12 / gpu_share (config.yaml: 4 for fine-tunes)."""
    (tmp_path / "share.yaml").write_text(yaml.safe_dump({"resources": {"intermediate": {"gpu_share": 2}}}))
    jobs = dry_run(tmp_path, "--configfile", str(REPO / TINY), "share.yaml")
    slots = {rule: {(r["gpu"], r.get("gpu_slots")) for r in rs} for rule, rs in jobs.items() if "gpu" in rs[0]}
    assert slots["pretrain"] == {("1", "12")} and slots["intermediate"] == {("1", "6")}
    assert slots["finetune"] == {("1", "3")} and slots["evaluate"] == {("0", None)}
    assert slots["pack_pets"] == {("0", None)}


def _planned(tmp_path: Path, *args: str):
    return snakemake(tmp_path, "-n", "-s", str(REPO / "Snakefile"), "--configfile", str(REPO / TINY), *args,
                     timeout=300)


def test_local_resources_gpu_n_counts_devices_of_12_slots(tmp_path):
    run = _planned(tmp_path, "--cores", "2", "--resources", "gpu=2")
    assert run.returncode == 0, run.stdout[-3000:]
    assert "sslseg: --resources gpu=2: 2 GPU(s) of 12 slots each (gpu_slots=24)" in run.stdout
    assert {r["gpu_slots"] for r in job_resources(run.stdout)["finetune"]} == {"3"}
    explicit = _planned(tmp_path, "--cores", "2", "--resources", "gpu=1", "gpu_slots=12")
    assert explicit.returncode == 0 and "sslseg: --resources gpu" not in explicit.stdout  # both kept as given


def test_slurm_runs_keep_gpu_as_given(tmp_path):
    """Under the SLURM profile `gpu` stays a count of whole GPUs (jobs ask for --gpus=1)."""
    run = _planned(tmp_path, "--profile", str(PROFILE), "--resources", "gpu=2")
    assert run.returncode == 0, run.stdout[-3000:]
    assert "sslseg: --resources gpu" not in run.stdout
    assert {r["gpu"] for r in job_resources(run.stdout)["finetune"]} == {"1"}


def test_a_bad_gpu_share_is_one_line_naming_the_key(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"resources": {"finetune": {"gpu_share": 5}}}))
    run = _planned(tmp_path, "--cores", "2", "--configfile", "bad.yaml")
    assert run.returncode != 0
    line = next(ln for ln in run.stdout.splitlines() if "gpu_share" in ln)
    assert line.startswith("sslseg: error: ") and "resources.finetune.gpu_share: 5 is not one of" in line, line
