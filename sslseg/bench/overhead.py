"""Per-job overhead: the CPU a workflow job spends before its first step (a fine-tune) or in all
(an evaluation on a handful of images), run as the workflow runs it (`python -m sslseg <rule>`),
each in its own process (cold) and handed to the warm-start server (sslseg.warm).

Fixed cost of a training job: the CPU of its process up to the first step (`startup_cpu_s`
of its sidecar, sslseg.train.fit), plus, warm, the client's whole CPU (the job's process that
Snakemake sees: interpreter start, the hand-over, waiting). An evaluation job is all fixed
cost: its whole CPU, the client's plus, warm, the forked child's (from the server's log).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sslseg import grid, warm
from sslseg.config import eval_settings, load_config, stage_settings
from sslseg.data.splits import write_rows

ROOT = Path(__file__).resolve().parents[2]
IMAGES = 16  # pets in the job's pack: enough for a step, small enough that reading it is not the cost


def _pack(path: Path, size: int) -> None:
    import h5py

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (IMAGES, size, size, 3), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f["images"], f["masks"] = images, (images[..., 0] // 86).astype(np.uint8)


def _run(args: list[str], env: dict, cwd: Path) -> tuple[float, float]:
    """(CPU seconds of the job's own process, wall seconds); raises with its output on failure."""
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sslseg", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"python -m sslseg {args[0]} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), wall


def _child_cpu(log: Path, seen: int) -> list[float]:
    """The forked jobs' CPU seconds the server logged after its first `seen` jobs."""
    lines = [line for line in log.read_text().splitlines() if line.startswith("warm: job ")] if log.exists() else []
    return [float(line.split(" cpu_s ")[1].split()[0]) for line in lines[seen:]]


def job_overhead(tmp: Path, config: Path = ROOT / "config.yaml", configfile: Path | None = None,
                 repeats: int = 3) -> dict:
    """Median fixed CPU seconds per job, cold and warm, for a fine-tune and an evaluation of the
    config's model (its image size and backbone), with `threads` 1 (as a CPU-bound grid runs)."""
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = load_config(config, configfile)
    run = grid.first_run(cfg, "finetune")
    size = cfg["model"]["image_size"]
    _pack(tmp / "pets.h5", size)
    write_rows(tmp / "rows.txt", np.arange(IMAGES))
    write_rows(tmp / "test.txt", np.arange(8))
    train = {**stage_settings(cfg, "finetune", run), "batch_size": 4, "iterations": 1, "epochs": 1,
             "milestones": [], "warmup": 0, "device": "cpu", "compile": False}
    evaluate = {**eval_settings(cfg, run.backbone), "device": "cpu"}
    runtime = {**cfg["runtime"], "progress": False}
    # a socket of its own (TMPDIR), so the measurement starts, uses and stops its own server
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
    out: dict = {"images": IMAGES, "image_size": size, "backbone": run.backbone, "repeats": repeats}
    log = Path(warm.socket_path(str(tmp)) + ".log")
    for mode in ("cold", "warm"):
        e = {**env, "SSLSEG_RUNTIME": json.dumps({**runtime, "warm_start": mode == "warm"})}
        if mode == "warm":  # the first job starts the server and runs cold; wait until it listens
            for _ in range(2):
                _job(tmp, e, train, evaluate, "start")
                if warm.wait_listening(lambda: [log], 120):
                    break
        fixed, clients, wall_train, evals, wall_eval = [], [], [], [], []
        for i in range(repeats):
            seen = len(_child_cpu(log, 0))
            (client_t, wt), (client_e, we) = _job(tmp, e, train, evaluate, f"{mode}{i}")
            side = json.loads((tmp / f"{mode}{i}" / "model.pt.json").read_text())
            child = _child_cpu(log, seen) if mode == "warm" else [0.0, 0.0]
            if len(child) != 2:
                raise RuntimeError(f"the warm-start server did not run both jobs (see {log})")
            # cold: the process's own first-step CPU includes its start; warm: the client's whole CPU adds
            fixed.append(side["startup_cpu_s"] + (client_t if mode == "warm" else 0.0))
            clients.append(client_t if mode == "warm" else 0.0)
            evals.append(client_e + child[1])
            wall_train.append(wt)
            wall_eval.append(we)
        out[mode] = {"train_fixed_cpu_s": statistics.median(fixed), "client_cpu_s": statistics.median(clients),
                     "evaluate_cpu_s": statistics.median(evals), "train_job_wall_s": statistics.median(wall_train),
                     "evaluate_job_wall_s": statistics.median(wall_eval)}
    out["job_overhead_cpu_s"] = out["warm"]["train_fixed_cpu_s"]  # what the planner charges per job
    warm.stop_servers(log)
    return out


def _job(tmp: Path, env: dict, train: dict, evaluate: dict, tag: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """A 1-step fine-tune, then its evaluation on 8 images, as the workflow's rules run them."""
    d = tmp / tag
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    t = _run(["finetune", "--pets", str(tmp / "pets.h5"), "--rows", str(tmp / "rows.txt"), "--out", str(d / "model.pt"),
              "--log", str(d / "log.csv"), "--settings", json.dumps(train), "--threads", "1"], env, tmp)
    e = _run(["evaluate", "--ckpt", str(d / "model.pt"), "--pets", str(tmp / "pets.h5"), "--rows", str(tmp / "test.txt"),
              "--out", str(d / "metrics.json"), "--settings", json.dumps(evaluate), "--run", "{}", "--threads", "1"],
             env, tmp)
    return t, e


def render(o: dict) -> str:
    c, w = o["cold"], o["warm"]
    return "\n".join([
        f"per-job overhead ({o['backbone']}, {o['image_size']} px, 1 thread; median of {o['repeats']}):",
        f"  fine-tune, CPU before the first step: cold {c['train_fixed_cpu_s']:.2f} s, warm {w['train_fixed_cpu_s']:.2f} s "
        f"(of which the client {w['client_cpu_s']:.2f} s)",
        f"  evaluation of 8 images, all CPU:      cold {c['evaluate_cpu_s']:.2f} s, warm {w['evaluate_cpu_s']:.2f} s",
        f"  job wall time (fine-tune, evaluate):   cold {c['train_job_wall_s']:.2f} s, {c['evaluate_job_wall_s']:.2f} s; "
        f"warm {w['train_job_wall_s']:.2f} s, {w['evaluate_job_wall_s']:.2f} s",
    ])


if __name__ == "__main__":
    import argparse
    import tempfile

    p = argparse.ArgumentParser(prog="python -m sslseg.bench.overhead", description=__doc__.splitlines()[0])
    p.add_argument("--configfile", default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="write the figures here too")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="sslseg-overhead-") as d:
        result = job_overhead(Path(d), configfile=a.configfile, repeats=a.repeats)
    print(render(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
