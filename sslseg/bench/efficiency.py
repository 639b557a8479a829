"""Whole-grid efficiency of a finished run: Σ image-steps / (wall time × the step's own img/s).

1.0 means the run did nothing but training steps at the rate the step runs alone; what is
missing went to job start-up, imports, compiling, packing, evaluation, reports and idle
slots. Read from a run's folder (`results/<name>`):

- image-steps and in-step seconds of every training job from its `log.csv` (pretrain/,
  intermediate/, runs/): per epoch, images_per_s × seconds is the images that epoch pushed
  through the step (the last batch short where drop_last is off), seconds its step time;
- the wall time: `--wall SECONDS` when given (what `time make demo` printed, the honest
  figure); else derived from the files: from the earliest job start (a log's mtime, its last
  write, minus its Snakemake benchmark's `s`) to the latest log's mtime. That misses
  Snakemake's own start-up before the first job and after the last, so it is a lower bound
  (and the efficiency an upper bound);
- the step's own img/s: with `--measure` (what BENCHMARKS.md records), each stage's step
  timed here, alone on the whole machine (every core), at the settings its jobs' sidecars
  record (objective, model, batch, augmentation) on a random batch: the reference is then per
  stage and the efficiency is Σ_stage image-steps / rate_stage over the wall, i.e. the time
  the run would take if it did nothing but its steps, each at its own rate, one after the
  other, over the time it took. Else `--rate` when given; else BENCHMARKS.json's SimMIM step
  (a_simmim) when it was measured at the run's image size; else the median over the run's
  training jobs of their own img/s (image-steps / in-step seconds), which is the step as the
  jobs ran it (with k jobs at once, each on 1/k of the machine: then use --measure).
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

TRAINING = {"pretrain": "pretrain", "intermediate": "intermediate", "runs": "finetune"}  # folder → stage


def training_jobs(run: Path) -> list[dict]:
    """Per training job (a log.csv under pretrain/, intermediate/ or runs/): stage, image_steps,
    step_s (seconds inside its epochs) and images_per_s (image_steps / step_s)."""
    jobs = []
    for folder, stage in TRAINING.items():
        for log in sorted((run / folder).rglob("log.csv")):
            with open(log, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("images_per_s") and r.get("seconds")]
            images = sum(round(float(r["images_per_s"]) * float(r["seconds"])) for r in rows)
            seconds = sum(float(r["seconds"]) for r in rows)
            if seconds > 0:
                jobs.append({"job": str(log.parent.relative_to(run)), "stage": stage, "image_steps": images,
                             "step_s": seconds, "images_per_s": images / seconds})
    return jobs


def wall_from_files(run: Path) -> tuple[float | None, str]:
    """(seconds, how) from the earliest job start to the latest log write; see the module doc."""
    ends, starts = [], []
    logs = [p for p in (run / "logs").rglob("*.log")] if (run / "logs").is_dir() else []
    for log in logs:
        end = log.stat().st_mtime
        tsv = run / "benchmarks" / log.relative_to(run / "logs").with_suffix(".tsv")
        ends.append(end)
        starts.append(end - _benchmark_s(tsv) if tsv.exists() else end)
    if not ends:
        return None, "no logs/ under the run: pass --wall"
    return max(ends) - min(starts), (f"from {len(logs)} job logs' mtimes minus their benchmark seconds "
                                     "(a lower bound: Snakemake's start-up and gaps outside jobs are missed)")


def _benchmark_s(tsv: Path) -> float:
    """A Snakemake benchmark file's wall seconds (`s`, first data row)."""
    with open(tsv, newline="") as f:
        row = next(csv.DictReader(f, delimiter="\t"), None)
    return float(row["s"]) if row and row.get("s") not in (None, "", "NA") else 0.0


def run_image_size(run: Path) -> int | None:
    """The model input side the run trained at, from a training sidecar's settings."""
    for folder in TRAINING:
        for side in sorted((run / folder).rglob("model.pt.json")):
            try:
                return int(json.loads(side.read_text())["settings"]["model"]["image_size"])
            except (KeyError, ValueError, TypeError):
                continue
    return None


def step_rate(jobs: list[dict], bench: dict | None, image_size: int | None) -> tuple[float, str]:
    """(img/s, where it came from): BENCHMARKS.json's SimMIM step at the run's image size, else
    the median of the jobs' own in-step img/s."""
    if bench and image_size and bench.get("settings", {}).get("simmim", {}).get("image_size") == image_size \
            and "a_simmim" in bench.get("measurements", {}):
        return bench["measurements"]["a_simmim"]["images_per_s"], \
            f"{bench.get('source', 'BENCHMARKS.json')} a_simmim at {image_size} px"
    return statistics.median(j["images_per_s"] for j in jobs), \
        f"median of the {len(jobs)} training jobs' own img/s (image-steps / in-step seconds)"


STAGE_LABELS = {"pretrain": None, "intermediate": "labels", "finetune": "masks"}


def measure_rates(run: Path, seconds: float = 8.0, threads: int | None = None) -> dict[str, float]:
    """Each stage's training step alone on this machine (img/s, `threads` = every core by
    default), at the settings the first of its jobs' sidecars records, on a random uint8 batch
    through the stage's own transform: the reference the efficiency compares the run with."""
    import os
    import time

    import torch

    from sslseg.data.augment import make_transform
    from sslseg.objectives import build_objective
    from sslseg.optim import make_optimizer
    from sslseg.train import make_generator, train_step

    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    device = torch.device("cpu")
    rates = {}
    for folder, stage in TRAINING.items():
        side = next(iter(sorted((run / folder).rglob("model.pt.json"))), None)
        if side is None:
            continue
        s = {**json.loads(side.read_text())["settings"], "device": "cpu", "compile": False, "amp": "none"}
        torch.manual_seed(0)
        objective = build_objective(s["objective"], s).to(device)
        objective.train()
        opt = make_optimizer(objective, s, device)
        label, b, size = STAGE_LABELS[stage], s["batch_size"], s["model"]["image_size"]
        transform = make_transform(s["augment"], size, label)
        gen = make_generator(device, 0)
        raw = {"images": torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8)}
        if label == "masks":
            raw["masks"] = torch.randint(0, s["classes"], (b, size, size), dtype=torch.uint8)
        elif label:
            raw[label] = torch.randint(0, s["classes"], (b,))
        for _ in range(3):  # warm-up: allocator, first-call caches
            train_step(objective, opt, transform(raw, gen), gen, "none", device)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            train_step(objective, opt, transform(raw, gen), gen, "none", device)
            n += 1
        rates[stage] = n * b / (time.perf_counter() - t0)
    return rates


def efficiency(run: Path, wall: float | None = None, rate: float | None = None, bench: dict | None = None,
               rates: dict[str, float] | None = None) -> dict:
    """The figures of the module doc for run folder `run`; raises ValueError when nothing trained."""
    jobs = training_jobs(run)
    if not jobs:
        raise ValueError(f"{run}: no training log.csv under pretrain/, intermediate/ or runs/")
    wall_how = "given (--wall)"
    if wall is None:
        wall, wall_how = wall_from_files(run)
        if wall is None:
            raise ValueError(f"{run}: {wall_how}")
    rate_how = "given (--rate)"
    if rate is None:
        rate, rate_how = step_rate(jobs, bench, run_image_size(run))
    steps = sum(j["image_steps"] for j in jobs)
    in_step = sum(j["step_s"] for j in jobs)
    stages = {}
    for j in jobs:
        s = stages.setdefault(j["stage"], {"jobs": 0, "image_steps": 0, "step_s": 0.0})
        s["jobs"] += 1
        s["image_steps"] += j["image_steps"]
        s["step_s"] += j["step_s"]
    eff = steps / (wall * rate)
    if rates:  # per-stage references: the run's steps back to back, each at its own rate
        missing = sorted(set(stages) - set(rates))
        if missing:
            raise ValueError(f"{run}: no measured step rate for {', '.join(missing)}")
        for stage, st in stages.items():
            st["reference_images_per_s"] = rates[stage]
        ideal = sum(st["image_steps"] / rates[stage] for stage, st in stages.items())
        rate = steps / ideal  # the rates' image-step-weighted harmonic mean
        rate_how, eff = "measured here per stage, alone on every core (--measure)", ideal / wall
    return {"run": str(run), "jobs": len(jobs), "image_steps": steps, "wall_s": wall, "wall_from": wall_how,
            "images_per_s": rate, "rate_from": rate_how, "efficiency": eff,
            "in_step_s": in_step, "in_step_fraction": in_step / wall, "stages": stages}


def render(e: dict) -> str:
    lines = [f"whole-grid efficiency of {e['run']}: {e['jobs']} training jobs"]
    for stage, s in e["stages"].items():
        ref = f", alone {s['reference_images_per_s']:.1f} img/s" if "reference_images_per_s" in s else ""
        lines.append(f"  {stage:<13}{s['jobs']:>4} jobs {s['image_steps']:>12,} image-steps"
                     f" {s['step_s']:>9.1f} s in steps{ref}")
    lines += [f"image-steps        {e['image_steps']:,}",
              f"wall time          {e['wall_s']:.1f} s ({e['wall_from']})",
              f"step's own img/s   {e['images_per_s']:.1f} ({e['rate_from']})",
              f"efficiency         {e['efficiency']:.3f}   (image-steps / (wall x img/s); target >= 0.7 for the demo)",
              f"time in steps      {e['in_step_fraction']:.3f} of the wall ({e['in_step_s']:.1f} s)"]
    return "\n".join(lines)
