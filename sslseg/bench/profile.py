"""Where one training step's time goes: milliseconds a step at several batch sizes, and the
share of the step in each kind of operation (torch.profiler), for a config's fine-tune or
SimMIM step.

    python -m sslseg.bench.profile --configfile workflow/configs/sample.yaml --batch-sizes 8 16

It answers "would a rewrite of the loop make this faster?" before anyone tries one: a step
spent mostly in matrix products is compute-bound. Random inputs, the stage's own objective,
optimizer and threads; the model step alone (no data loading or augmentation: sslseg.bench
times those).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from sslseg.bench import run_cli
from sslseg.bench.tasks import TASKS, set_threads, task_settings
from sslseg.bench.timing import random_batch, settings_flops
from sslseg.config import load_config
from sslseg.io import UserError
from sslseg.objectives import build_objective
from sslseg.optim import make_optimizer
from sslseg.train import make_generator, pick_device, train_step

ROOT = Path(__file__).resolve().parents[2]
PROG = "python -m sslseg.bench.profile"

# Operation kinds by profiler event name: the first whose pattern is in the name wins.
KINDS = (("optimizer", ("Optimizer.step",)),
         ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm")),
         ("attention", ("scaled_dot_product",)),
         ("dropout masks", ("aten::bernoulli", "aten::native_dropout")))


def _stepper(s: dict, batch_size: int, device: torch.device):
    """One eager training step of the stage's objective and optimizer on a fixed random batch."""
    torch.manual_seed(0)
    objective = build_objective(s["objective"], s).to(device).train()
    opt, gen = make_optimizer(objective, s, device), make_generator(device, 0)
    batch = random_batch(s, batch_size, device)
    return lambda: train_step(objective, opt, batch, gen, s["amp"], device)


def step_ms(s: dict, batch_size: int, steps: int, device: torch.device) -> float:
    """Median milliseconds of one training step at `batch_size` (after 3 untimed ones)."""
    step, times = _stepper(s, batch_size, device), []
    for i in range(steps + 3):
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return 1000 * sorted(times)[len(times) // 2]


def _under_optimizer(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer.step"):
            return True
        parent = parent.cpu_parent
    return False


def shares(s: dict, batch_size: int, steps: int, device: torch.device) -> dict[str, float]:
    """Fraction of the profiled steps' wall time in each of KINDS, and the rest as "other" (the
    forward's and backward's elementwise work and Python). Operations count by their self time,
    the optimizer by its step's whole time, and nothing under the optimizer's step twice. The
    profiler's own cost per operation inflates the share of many small ones (the optimizer's) a
    little. On a GPU these are the host's times, not the kernels' (sslseg.bench.gpu_smoke)."""
    from torch.profiler import profile

    step = _stepper(s, batch_size, device)
    step()
    with profile() as prof:
        t = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall_us = (time.perf_counter() - t) * 1e6
    out = dict.fromkeys([k for k, _ in KINDS], 0.0)
    for e in prof.events():
        if _under_optimizer(e):
            continue
        if e.name.startswith("Optimizer.step"):
            out["optimizer"] += e.cpu_time_total
        elif kind := next((k for k, names in KINDS if any(n in e.name for n in names)), None):
            out[kind] += e.self_cpu_time_total
    out["other"] = wall_us - sum(out.values())
    return {k: v / wall_us for k, v in out.items()}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "config.yaml"), help="the workflow config whose settings to use")
    p.add_argument("--configfile", default=None, help="extra config merged on top")
    p.add_argument("--task", choices=sorted(TASKS), default="finetune", help="the step to profile")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: the stage's batch size")
    p.add_argument("--steps", type=int, default=20, help="timed (and profiled) steps per batch size")
    p.add_argument("--device", default=None, help="override the config's device (cpu, cuda, auto)")
    args = p.parse_args(argv)
    if args.steps < 1 or any(b < 1 for b in args.batch_sizes or []):
        raise UserError("--steps and --batch-sizes: use whole numbers of at least 1")
    cfg = load_config(args.config, args.configfile)
    try:
        device = pick_device(args.device or cfg["device"])
    except RuntimeError:
        raise UserError(f"--device {args.device}: not a device torch knows; use cpu, cuda or auto") from None
    s = task_settings(cfg, args.task, device)
    threads = set_threads(cfg, TASKS[args.task], quick=False)
    gflop = settings_flops(s) / 1e9  # per image, forward and backward
    rows = []
    print(f"{args.task} step: {s['model']['backbone']} at {s['model']['image_size']} px, {s['objective']}, "
          f"{gflop:.2f} GFLOP an image; {device.type}, {threads} thread(s)")
    for bs in args.batch_sizes or [s["batch_size"]]:
        ms = step_ms(s, bs, args.steps, device)
        share = shares(s, bs, args.steps, device)
        rows.append({"batch_size": bs, "ms_per_step": ms, "images_per_s": 1000 * bs / ms,
                     "gflop_per_s": gflop * bs / ms * 1000, "shares": share})
        parts = ", ".join(f"{k} {100 * v:.0f} %" for k, v in share.items())
        print(f"batch {bs:>4}: {ms:8.1f} ms/step {1000 * bs / ms:8.1f} img/s {gflop * bs / ms * 1000:7.1f} GFLOP/s"
              f"   {parts}")
    return rows


def cli(argv: list[str] | None = None) -> list[dict]:
    """`main`, with a problem in the input (config, flags) as one line on stderr and exit status 2."""
    return run_cli(main, PROG, argv)


if __name__ == "__main__":
    cli()
