"""Timing and memory: interleaved rounds of steps, the peak memory of each, model FLOPs.

Also `step_rate`, the planner's stand-in measurement when no BENCHMARKS.json exists, and
`settings_flops`, the planner's per-job cost.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sslseg.optim import make_optimizer
from sslseg.train import make_generator, train_step


# --- memory -----------------------------------------------------------------------------------

def status_kb(field: str, pid: int | str = "self") -> int:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM); 0 where there is no /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak(device: torch.device) -> bool:
    """Start a new peak: CUDA's allocator counter, or Linux's VmHWM (writing 5 to clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:  # not Linux, or not allowed: fall back to the lifetime peak
        return False


def peak_mb(device: torch.device, base_kb: int) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(0, hwm - base_kb) / 1024


def memory_kind(device: torch.device) -> str:
    """What `peak_mb` reports here, for the report's header."""
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated, reset per round"
    if reset_peak(device):
        return "peak RSS of this process (VmHWM, reset per round) above its RSS before the task's setup"
    return "ru_maxrss (lifetime peak: cannot be reset here) above the RSS before the task's setup"


def children_hwm_mb() -> float:
    """Peak RSS of this process's children (DataLoader workers); counts pages shared with us."""
    try:
        pids = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    except OSError:
        return 0.0
    return sum(status_kb("VmHWM", p) for p in pids) / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- timing -----------------------------------------------------------------------------------

def interleaved(steps: dict[str, Callable[[], int]], seconds: float, rounds: int, device: torch.device,
                base_kb: int) -> dict[str, dict]:
    """Run each step (returns images done) for seconds/rounds per round, in turn, `rounds` times.

    images_per_s is the median over rounds: on a shared machine a burst of someone else's work
    stalls a multi-threaded step for seconds, and the median keeps one such round from deciding
    a ratio; mean_images_per_s and the per-round figures are kept beside it."""
    acc = {k: {"images": [], "seconds": [], "peak_mb": 0.0} for k in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            _sync(device)
            reset_peak(device)
            images, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / rounds:
                images += step()
            _sync(device)  # GPU work queued in the round belongs to it
            acc[name]["images"].append(images)
            acc[name]["seconds"].append(time.perf_counter() - t0)
            acc[name]["peak_mb"] = max(acc[name]["peak_mb"], peak_mb(device, base_kb))
    out = {}
    for k, v in acc.items():
        rates = [i / t for i, t in zip(v["images"], v["seconds"])]
        out[k] = {"images_per_s": float(np.median(rates)), "mean_images_per_s": sum(v["images"]) / sum(v["seconds"]),
                  "round_images_per_s": [round(r, 2) for r in rates], "images": sum(v["images"]),
                  "seconds": round(sum(v["seconds"]), 2), "peak_mb": round(v["peak_mb"], 1)}
    return out


def count_flops(objective: torch.nn.Module, batch: dict, gen: torch.Generator) -> float:
    """Model FLOPs (forward + backward) per image, counted by FlopCounterMode on the eager module."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss, _ = objective(batch, gen)
        loss.backward()
    objective.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch["images"].shape[0]


def random_batch(settings: dict, batch_size: int, device: torch.device | None = None,
                 gen: torch.Generator | None = None) -> dict:
    """A batch any objective of `settings` trains on, already augmented: normalised "images", "masks"
    (segmentation) and "labels" (classification); what a step costs does not depend on the values."""
    size, classes = settings["model"]["image_size"], settings.get("classes") or 3
    kw = {"device": device, "generator": gen}
    return {"images": torch.randn(batch_size, 3, size, size, **kw),
            "masks": torch.randint(0, min(classes, 3), (batch_size, size, size), **kw),
            "labels": torch.randint(0, classes, (batch_size,), **kw)}


def step_rate(objective: torch.nn.Module, batch: dict, settings: dict, device: torch.device, seconds: float,
              warmup: int = 2) -> float:
    """Images/s of the model step alone (eager) on `batch` already on `device`; used by the planner."""
    objective.to(device).train()
    opt, gen = make_optimizer(objective, settings, device), make_generator(device, 0)
    amp = settings["amp"]
    for _ in range(warmup):
        train_step(objective, opt, batch, gen, amp, device)

    def step() -> int:
        train_step(objective, opt, batch, gen, amp, device)
        return len(batch["images"])

    return interleaved({"c": step}, seconds, 1, device, 0)["c"]["images_per_s"]


# Settings that change how a model is trained but not what one step computes per image: left
# out of `settings_flops`' cache key, so a grid's seeds, budgets and LRs share one count.
NOT_COST = frozenset({"stage", "device", "compile", "compile_min_image_steps", "amp", "cuda_batch_multiplier",
                      "lr_scaling", "epochs", "iterations", "batch_size", "lr", "weight_decay", "milestones", "gamma",
                      "warmup", "schedule", "optimizer", "momentum", "wd_exclusions", "augment", "drop_last", "seed",
                      "dropout", "mixup_alpha"})
_FLOPS: dict[tuple[str, bool], float] = {}


def settings_flops(settings: dict, train: bool = True) -> float:
    """FLOPs (forward + backward) per image of the objective a stage's `settings` build, counted
    once per distinct model (cached): decoders, MAE's encoder on the visible tokens only and the
    head are all in it. `train`: as the stage trains it, so frozen parts (a probe's backbone,
    DDeP's encoder) compute no weight gradients; False: every part trainable (evaluation's
    stand-in: a forward pass costs about a third of this, whatever is frozen)."""
    from sslseg.objectives import build_objective
    from sslseg.optim import freeze

    key = (json.dumps({k: v for k, v in settings.items() if k not in NOT_COST}, sort_keys=True, default=str), train)
    if key not in _FLOPS:
        torch.manual_seed(0)
        objective = build_objective(settings["objective"], settings).train()
        if train:
            freeze(objective, settings.get("freeze", []), settings.get("stage", "stage"))
        gen = torch.Generator().manual_seed(0)
        batch = random_batch(settings, 2, gen=gen)  # 2: BatchNorm needs more than one value
        _FLOPS[key] = count_flops(objective, batch, gen)
    return _FLOPS[key]
