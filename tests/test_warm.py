"""Warm start (sslseg/warm.py): a job handed to the server is the job run in its own process,
minus the imports: same artifacts, same exit status and messages, killed when its client is."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sslseg import grid, warm
from sslseg.config import load_config, stage_settings
from sslseg.data.splits import write_rows

ROOT = Path(__file__).resolve().parents[1]
LOGS = "sslseg-*/warm-*.sock.log"  # the servers' logs in a TMPDIR (warm.socket_path)
RUNTIME = {"log_every": 10, "checkpoint_every": 10, "memory_gb": 1.0, "progress": False, "warm_start": True}


def test_only_workflow_jobs_outside_slurm_go_warm(monkeypatch):
    on = {"SSLSEG_RUNTIME": json.dumps(RUNTIME)}
    assert warm.wanted(on)
    assert not warm.wanted({})  # a stage run by hand
    assert not warm.wanted({**on, "SLURM_JOB_ID": "7"})
    assert not warm.wanted({"SSLSEG_RUNTIME": json.dumps({**RUNTIME, "warm_start": False})})
    assert not warm.wanted({"SSLSEG_RUNTIME": "{not json"})  # the job itself reports it (sslseg.runtime)
    monkeypatch.setattr(sys, "platform", "darwin")  # no SO_PEERCRED, no PR_SET_PDEATHSIG: every job cold
    assert not warm.wanted(on)


@pytest.fixture
def job(tmp_path):
    """A copy of the package (its own server, files the test may touch), a 24-image pets pack,
    fine-tune settings, and a function running `python -m sslseg finetune` as the workflow does."""
    code = tmp_path / "code"
    shutil.copytree(ROOT / "sslseg", code / "sslseg", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "workflow" / "schemas", code / "workflow" / "schemas")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    import h5py

    with h5py.File(tmp_path / "pets.h5", "w") as f:
        f["images"], f["masks"] = images, (images[..., 0] // 86).astype(np.uint8)
    write_rows(tmp_path / "rows.txt", np.arange(16))
    cfg = load_config(ROOT / "config.yaml", ROOT / "workflow/configs/tiny.yaml")
    settings = {**stage_settings(cfg, "finetune", grid.first_run(cfg, "finetune")), "batch_size": 4, "epochs": 2,
                "iterations": 0, "milestones": []}
    env = {**os.environ, "PYTHONPATH": str(code), "TMPDIR": str(tmp_path), "SSLSEG_RUNTIME": json.dumps(RUNTIME)}

    def run(tag: str, warm_start: bool = True, settings=settings, wait: bool = True, **extra):
        out = tmp_path / tag
        out.mkdir(exist_ok=True)
        e = {**env, "SSLSEG_RUNTIME": json.dumps({**RUNTIME, "warm_start": warm_start}), **extra}
        args = [sys.executable, "-m", "sslseg", "finetune", "--pets", str(tmp_path / "pets.h5"), "--rows",
                str(tmp_path / "rows.txt"), "--out", str(out / "model.pt"), "--log", str(out / "log.csv"),
                "--settings", json.dumps(settings), "--threads", "1"]
        log = open(out / "job.log", "w")
        proc = subprocess.Popen(args, cwd=tmp_path, env=e, stdout=log, stderr=subprocess.STDOUT)
        if not wait:
            return proc, out
        proc.wait(timeout=300)
        return proc.returncode, out
    run.tmp, run.settings = tmp_path, settings
    yield run
    for log in tmp_path.glob(LOGS):  # stop the test's server
        warm.stop_servers(log)


def wait_for_server(tmp: Path, timeout: float = 120) -> int:
    """The pid of the server the first job started, once it listens."""
    pid = warm.wait_listening(lambda: tmp.glob(LOGS), timeout)
    assert pid is not None, "no warm-start server came up: " + " ".join(p.read_text() for p in tmp.glob(LOGS))
    return pid


def children_of(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def weights(path: Path) -> dict:
    ckpt = torch.load(path, weights_only=False)
    return ckpt.get("model", ckpt)


def test_a_warm_job_writes_what_a_cold_one_does_for_a_fraction_of_the_cpu(job):
    code, cold = job("cold", warm_start=False)
    assert code == 0, (cold / "job.log").read_text()
    code, first = job("first")  # no server yet: runs cold and starts one
    assert code == 0, (first / "job.log").read_text()
    wait_for_server(job.tmp)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    code, hot = job("warm")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert code == 0, (hot / "job.log").read_text()
    a, b = weights(cold / "model.pt"), weights(hot / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    losses = [(d / "log.csv").read_text().splitlines() for d in (cold, hot)]
    assert [line.split(",")[:3] for line in losses[0]] == [line.split(",")[:3] for line in losses[1]]
    sidecar = json.loads((hot / "model.pt.json").read_text())
    assert sidecar["stage"] == "finetune" and sidecar["seed"] == job.settings["seed"]
    # the client is all the job's process pays: no torch import (a cold job: ~4 s of CPU here)
    client_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert client_cpu < 1.0, client_cpu


def test_a_warm_job_fails_as_a_cold_one_does(job):
    job("first")
    wait_for_server(job.tmp)
    bad = {**job.settings, "freeze": ["nothing."]}  # a UserError: exit 2 and one line
    results = {}
    for tag, warm_start in (("cold", False), ("warm", True)):
        code, out = job(tag, warm_start, settings=bad)
        results[tag] = (code, [line for line in (out / "job.log").read_text().splitlines() if "error" in line])
    assert results["warm"] == results["cold"] and results["cold"][0] == 2
    assert "finetune.freeze: prefix 'nothing.' matches no parameter" in results["warm"][1][0]


def test_killing_the_client_kills_its_job(job):
    job("first")
    server = wait_for_server(job.tmp)
    long = {**job.settings, "epochs": 10_000}
    for sig, client_dies_by in ((signal.SIGTERM, -signal.SIGTERM), (signal.SIGKILL, -signal.SIGKILL)):
        proc, out = job(f"killed{sig}", settings=long, wait=False)
        end = time.time() + 60
        while not children_of(server) and time.time() < end:
            time.sleep(0.1)
        (child,) = children_of(server)
        time.sleep(1.0)
        proc.send_signal(sig)  # Snakemake stopping the job (TERM), or the job's process lost (KILL)
        assert proc.wait(timeout=30) == client_dies_by
        end = time.time() + 10
        while alive(child) and time.time() < end:
            time.sleep(0.1)
        assert child not in children_of(server), f"the job of a {sig.name}ed client is still running"
        assert not (out / "model.pt").exists()


def test_changed_code_is_never_served(job):
    job("first")
    server = wait_for_server(job.tmp)
    (job.tmp / "code" / "sslseg" / "train.py").touch()  # as an edit would
    code, out = job("after-edit")
    assert code == 0, (out / "job.log").read_text()  # ran cold, with the code on disk
    end = time.time() + 10
    while alive(server) and time.time() < end:
        time.sleep(0.1)
    assert not alive(server), "a server with stale code kept running"
    assert "changed since it was imported" in next(job.tmp.glob(LOGS)).read_text()


def server_socket(tmp: Path) -> str:
    return str(next(tmp.glob(LOGS)))[:-len(".log")]


def test_a_client_gone_before_its_answer_kills_its_job_not_the_server(job):
    """A client that vanishes right after sending its request (killed, say) must not leave its job
    running unseen, nor take the server, and the other jobs with it, down."""
    import socket as sk

    job("first")
    server = wait_for_server(job.tmp)
    long = {**job.settings, "epochs": 10_000}
    request = json.dumps({"argv": ["finetune", "--pets", str(job.tmp / "pets.h5"), "--rows", str(job.tmp / "rows.txt"),
                                   "--out", str(job.tmp / "gone" / "model.pt"), "--log", str(job.tmp / "gone" / "log.csv"),
                                   "--settings", json.dumps(long)], "cwd": str(job.tmp),
                          "env": {**os.environ, "PYTHONPATH": str(job.tmp / "code")}}).encode()
    (job.tmp / "gone").mkdir()
    with open(os.devnull, "r+b") as null:
        conn = sk.socket(sk.AF_UNIX, sk.SOCK_STREAM)
        conn.connect(server_socket(job.tmp))
        sk.send_fds(conn, [len(request).to_bytes(8, "big") + request], [null.fileno()] * 3)
        conn.close()
    time.sleep(1.0)  # the server reads the request, forks, finds the client gone
    end = time.time() + 15
    while children_of(server) and time.time() < end:
        time.sleep(0.1)
    assert not children_of(server), "the job of a vanished client is still running"
    assert alive(server)
    code, out = job("after")
    assert code == 0 and (out / "model.pt").exists(), (out / "job.log").read_text()
    assert not (job.tmp / "gone" / "model.pt").exists()


def test_a_code_edit_lets_running_jobs_finish(job):
    job("first")
    server = wait_for_server(job.tmp)
    longer = {**job.settings, "epochs": 40}
    proc, out = job("running", settings=longer, wait=False)
    end = time.time() + 60
    while not children_of(server) and time.time() < end:
        time.sleep(0.1)
    assert children_of(server)
    (job.tmp / "code" / "sslseg" / "optim.py").touch()
    code, cold = job("cold-after-edit")
    assert code == 0, (cold / "job.log").read_text()
    assert proc.wait(timeout=300) == 0, (out / "job.log").read_text()  # not killed by the edit
    assert (out / "model.pt").exists()
    end = time.time() + 10
    while alive(server) and time.time() < end:
        time.sleep(0.1)
    assert not alive(server)


def test_a_dead_server_takes_its_jobs_with_it(job):
    """A server that crashes must not leave a job running that Snakemake counts as failed (its
    rerun would collide with it): the child dies with the server, the client fails with a line."""
    job("first")
    server = wait_for_server(job.tmp)
    proc, out = job("orphan", settings={**job.settings, "epochs": 10_000}, wait=False)
    end = time.time() + 60
    while not children_of(server) and time.time() < end:
        time.sleep(0.1)
    (child,) = children_of(server)
    os.kill(server, signal.SIGKILL)
    assert proc.wait(timeout=30) == 1
    assert "warm-start server died" in (out / "job.log").read_text()
    end = time.time() + 10
    while alive(child) and time.time() < end:
        time.sleep(0.1)
    assert not alive(child)


def test_a_server_that_cannot_fork_safely_says_why():
    """In a fresh interpreter, as the server is (this one has test threads, tqdm's monitor...):
    after the imports it may fork; with a Python thread running it may not."""
    script = """
import threading
from sslseg import warm
warm._preload()
print(warm._safe_to_fork())
stop = threading.Event()
t = threading.Thread(target=stop.wait)
t.start()
print(warm._safe_to_fork())
stop.set()
t.join()
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-2] == "None" and "1 Python thread(s) started" in lines[-1]


def test_a_job_goes_only_to_a_server_of_the_same_user(tmp_path, monkeypatch):
    """A socket at the server's name held by another user (a shared /tmp) gets no request: the
    request carries the job's environment and open files."""
    import socket as sk

    a, b = sk.socketpair(sk.AF_UNIX)
    assert warm._peer_uid(a) == os.getuid()
    a.close(), b.close()
    path = str(tmp_path / "other.sock")
    listener = sk.socket(sk.AF_UNIX, sk.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    monkeypatch.setattr(warm, "socket_path", lambda folder=None: path)
    monkeypatch.setattr(warm, "_peer_uid", lambda conn: os.getuid() + 1)
    assert warm.run(["finetune"]) is None  # the job then runs in its own process
    conn, _ = listener.accept()
    conn.settimeout(2)
    assert conn.recv(1) == b""  # nothing was sent
    listener.close()
