"""The command line: `python -m sslseg.bench [--quick] [--json FILE] ...` (see sslseg/bench/__init__.py).

Writes its JPEGs and packs into a temporary folder, runs every task, prints the table
and writes the JSON that BENCHMARKS.md quotes and `python -m sslseg plan` reads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import sslseg.bench
from sslseg.bench import run_cli
from sslseg.bench.data import write_images
from sslseg.bench.overhead import job_overhead
from sslseg.bench.overhead import render as render_overhead
from sslseg.bench.report import peak_flops, render, summarize
from sslseg.bench.tasks import TASKS, bench_eval, bench_pack, bench_task, task_settings
from sslseg.bench.timing import memory_kind
from sslseg.config import load_config
from sslseg.data.pack import pack
from sslseg.io import UserError
from sslseg.train import pick_device

ROOT = Path(__file__).resolve().parents[2]
PROG = "python -m sslseg.bench"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=sslseg.bench.__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "config.yaml"), help="the workflow config whose settings to use")
    p.add_argument("--configfile", default=None, help="extra config merged on top")
    p.add_argument("--device", default=None, help="override the config's device")
    p.add_argument("--seconds", type=float, default=None, help="timed seconds per measurement (default 20, quick 0.5)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of a, b, c, d")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3, quick 1)")
    p.add_argument("--images", type=int, default=None, help="JPEGs written (default 512, quick 24)")
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak for MFU, if the device is not known")
    p.add_argument("--quick", action="store_true", help="seconds-scale smoke run: tiny sizes, no compile")
    p.add_argument("--json", default=None, help="write the results here")
    g = p.add_argument_group("whole-grid efficiency of a finished run (instead of the benchmark)")
    g.add_argument("--efficiency", metavar="RUN", default=None,
                   help="a finished run's folder, e.g. results/demo: print its whole-grid efficiency")
    g.add_argument("--wall", type=float, default=None,
                   help="the run's wall time in seconds (else derived from its log files' mtimes: a lower bound)")
    g.add_argument("--rate", type=float, default=None,
                   help="the step's own img/s (else BENCHMARKS.json's at the run's image size, else the jobs' median)")
    g.add_argument("--measure", action="store_true",
                   help="time each stage's step here, alone on every core, as the per-stage reference (recorded figure)")
    args = p.parse_args(argv)
    args.seconds = args.seconds or (0.5 if args.quick else 20.0)
    args.warmup = args.warmup or (1 if args.quick else 3)
    args.rounds = 1 if args.quick else args.rounds
    args.images = args.images or (24 if args.quick else 512)
    return args


def check_images(cfg: dict, device: torch.device, args: argparse.Namespace) -> None:
    """Every task needs one whole batch from --images packed rows (training drops a partial
    batch, so fewer would leave the timing loops waiting for ever)."""
    for task in TASKS:
        bs = task_settings(cfg, task, device, args.quick)["batch_size"]
        if args.images < bs:
            raise UserError(f"--images {args.images} is fewer than the {task} batch size {bs} on {device.type}; "
                            f"pass --images {bs} or more")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.efficiency:
        return run_efficiency(args)
    cfg = load_config(args.config, args.configfile)
    device = pick_device(args.device or cfg["device"])
    check_images(cfg, device, args)
    jpeg_size, n = ((160, 120) if args.quick else (500, 375)), args.images
    timing = {"seconds": args.seconds, "quick": args.quick}
    result = {"command": " ".join([PROG, *(argv if argv is not None else sys.argv[1:])]),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device.type,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "cpus": os.cpu_count(), "torch": torch.__version__, "load_average": list(os.getloadavg()),
              "memory_kind": memory_kind(device),
              "measurements": {}, "settings": {}, "flops_per_image": {}, "compile_s": {}, "baseline": {}}
    with tempfile.TemporaryDirectory(prefix="sslseg-bench-") as tmp:
        root = Path(tmp)
        records = write_images(root, n, jpeg_size)
        result["jpeg"] = {"count": n, "size": f"{jpeg_size[0]}x{jpeg_size[1]}",
                          "mean_kb": float(np.mean([r.image.stat().st_size for r in records])) / 1024}
        pack_size = 36 if args.quick else cfg["data"]["pretrain"]["pack_size"]
        result["measurements"]["pack"] = bench_pack(cfg, records, root / "pretrain.h5", pack_size, **timing)
        pets_size = task_settings(cfg, "finetune", device, args.quick)["model"]["image_size"]
        pack(records, root / "pets.h5", pets_size, cfg["data"]["pets"]["resize"], 1)  # as pack_pets
        data = {"simmim": root / "pretrain.h5", "finetune": root / "pets.h5", "records": records, "root": root,
                "sizes": {"simmim": pack_size, "finetune": pets_size}}
        for task in TASKS:
            r = bench_task(task, cfg, device, data, rounds=args.rounds, warmup=args.warmup, **timing)
            for k, v in r.pop("measurements").items():
                result["measurements"][f"{k}_{task}"] = v
            for k, v in r.items():
                result[k][task] = v
        result["measurements"]["evaluate"] = bench_eval(cfg, device, data, **timing)
        # a job's fixed cost, as the workflow runs it: own process (cold) and warm start (sslseg.warm)
        result["overhead"] = job_overhead(root / "overhead", Path(args.config), args.configfile and Path(args.configfile),
                                          repeats=1 if args.quick else 3)
        result["job_overhead_cpu_s"] = result["overhead"]["job_overhead_cpu_s"]
        # what `plan` charges per job: a warm 1-step job's wall time, start to exit (the default local run)
        result["job_overhead_s"] = result["overhead"]["warm"]["train_job_wall_s"]
    summarize(result, device, peak_flops(device, args.peak_tflops))
    print(render(result))
    print(render_overhead(result["overhead"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def run_efficiency(args: argparse.Namespace) -> dict:
    from sslseg.bench.efficiency import efficiency, render as render_efficiency
    from sslseg.plan import load_bench

    run = Path(args.efficiency)
    if not run.is_dir():
        raise UserError(f"--efficiency {run}: no such run folder")
    try:
        rates = None
        if args.measure:
            from sslseg.bench.efficiency import measure_rates

            rates = measure_rates(run, seconds=2.0 if args.quick else 8.0)
        e = efficiency(run, args.wall, args.rate, load_bench(None), rates)
    except ValueError as err:
        raise UserError(str(err)) from None
    print(render_efficiency(e))
    if args.json:
        Path(args.json).write_text(json.dumps(e, indent=2) + "\n")
    return e


def cli(argv: list[str] | None = None) -> dict:
    """`main`, with a problem in the input (config, flags) as one line on stderr and exit status 2."""
    return run_cli(main, PROG, argv)


if __name__ == "__main__":
    cli()
