"""Command line: one sub-command per stage, each parsing paths and calling one function.

Stage settings arrive as one JSON object (`--settings`), the slice of the
validated config that the Snakemake rule passes as `params`, so there is no
second set of defaults here to drift from the schema.
"""

from __future__ import annotations

import argparse
import json
import sys

from sslseg.io import UserError


def _settings(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"--settings: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise UserError("--settings: expected a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sslseg", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(name: str, help: str, *args: tuple[str, dict]) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        for flag, kw in args:
            c.add_argument(flag, **kw)
        return c

    req = {"required": True}
    settings = ("--settings", {"type": _settings, "default": {}, "help": "stage settings as a JSON object"})
    threads = ("--threads", {"type": int, "default": 1})
    cmd("demo-data", "write the generated demo dataset in the official layouts",
        ("--out", req), ("--pets", {"type": int, "default": 300}), ("--pretrain", {"type": int, "default": 300}),
        ("--intel-per-class", {"type": int, "default": 20}), ("--seed", {"type": int, "default": 0}))
    cmd("pack-pets", "Oxford-IIIT Pet folder → HDF5", ("--root", req), ("--out", req), settings, threads)
    cmd("pack-folder", "folder of images (ImageNet/Intel layout) → HDF5", ("--root", req), ("--out", req), settings, threads)
    cmd("extract-intel", "unpack Kaggle's Intel archive into seg_train/ and seg_test/", ("--archive", req), ("--out", req))
    cmd("splits", "test set and fine-tune pool", ("--pets", req), ("--test", req), ("--pool", req), settings)
    cmd("subset", "nested fine-tune subset", ("--pool", req), ("--out", req),
        ("--size", {"type": int, **req}), ("--seed", {"type": int, **req}))
    for name, help in (("pretrain", "SimMIM pretraining"),):
        cmd(name, help, ("--pack", req), ("--size", {"type": int, **req}), ("--out", req), ("--log", req), settings, threads)
    cmd("intermediate", "intermediate classification", ("--pack", req), ("--init", {"default": None}),
        ("--out", req), ("--log", req), settings, threads)
    cmd("intermediate-eval", "intermediate test accuracy", ("--ckpt", req), ("--pack", req), ("--out", req), settings, threads)
    cmd("finetune", "segmentation fine-tune", ("--pets", req), ("--rows", req), ("--init", {"default": None}),
        ("--out", req), ("--log", req), settings, threads)
    cmd("evaluate", "metrics of a fine-tune on the test rows", ("--ckpt", req), ("--pets", req), ("--rows", req),
        ("--out", req), settings, threads)
    cmd("evaluate-folder", "evaluate any checkpoint on an Oxford-layout folder", ("--ckpt", req), ("--root", req),
        ("--out", {"default": None}), ("--config", {"default": None, "help": "config.yaml whose model section to use"}),
        ("--configfile", {"default": None, "help": "extra config merged on top"}), settings, threads)
    cmd("aggregate", "collect metrics into one CSV", ("--out", req), ("--metrics", {"nargs": "+", **req}))
    cmd("tables", "Markdown + CSV tables", ("--runs", req), ("--outdir", req), settings)
    cmd("figures", "mIoU vs fine-tune size, Δ intermediate", ("--runs", req), ("--out", req),
        ("--delta-out", {"default": None}), settings)
    report = ("--report", {"type": _settings, "default": {}, "help": "report settings as a JSON object"})
    cmd("reconstructions", "SimMIM reconstruction examples", ("--ckpt", req), ("--pack", req), ("--out", req),
        settings, report)
    cmd("segmentations", "segmentation examples", ("--ckpt", req), ("--pets", req), ("--rows", req), ("--out", req),
        settings, report)
    cmd("plan", "estimate the wall time of the configured grid", ("--config", {"default": "config.yaml"}),
        ("--configfile", {"default": None}),
        ("--bench", {"default": None, "help": "JSON of python -m sslseg.bench (default BENCHMARKS.json if present)"}))
    return p


def run(args: argparse.Namespace) -> None:
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    s = getattr(args, "settings", {})
    c = args.command
    if c == "demo-data":
        from sslseg.data.demo import make_demo

        make_demo(args.out, args.pets, args.pretrain, args.intel_per_class, args.seed)
        return
    from sslseg import stages

    if c == "pack-pets":
        stages.pack_pets(args.root, args.out, s, args.threads)
    elif c == "pack-folder":
        stages.pack_folder(args.root, args.out, s, args.threads)
    elif c == "extract-intel":
        from sslseg.data.sources import extract_intel

        extract_intel(args.archive, args.out)
    elif c == "splits":
        stages.splits(args.pets, args.test, args.pool, s)
    elif c == "subset":
        stages.subset(args.pool, args.out, args.size, args.seed)
    elif c == "pretrain":
        stages.pretrain(args.pack, args.size, args.out, args.log, s)
    elif c == "intermediate":
        stages.intermediate(args.pack, args.init, args.out, args.log, s)
    elif c == "intermediate-eval":
        stages.intermediate_accuracy(args.ckpt, args.pack, args.out, s)
    elif c == "finetune":
        stages.finetune(args.pets, args.rows, args.init, args.out, args.log, s)
    elif c == "evaluate":
        stages.evaluate(args.ckpt, args.pets, args.rows, args.out, s)
    elif c == "evaluate-folder":
        from sslseg.config import load_config
        from sslseg.io import write_json

        if args.config or args.configfile or not s:
            cfg = load_config(args.config or "config.yaml", args.configfile)
            s = {"model": cfg["model"], "device": cfg["device"], **cfg["evaluate"], **s}
        result = stages.evaluate_folder(args.ckpt, args.root, s, args.threads)
        print(json.dumps(result, indent=2))
        if args.out:
            write_json(args.out, result)
    elif c == "aggregate":
        from sslseg.report.tables import aggregate

        aggregate(args.metrics, args.out)
    elif c == "tables":
        from sslseg.report.tables import write_tables

        write_tables(args.runs, args.outdir, s)
    elif c == "figures":
        from sslseg.report.figures import delta_figure, miou_figure

        miou_figure(args.runs, args.out, s)
        if args.delta_out:
            delta_figure(args.runs, args.delta_out, s)
    elif c == "reconstructions":
        from sslseg.report.figures import reconstructions

        reconstructions(args.ckpt, args.pack, args.out, s, args.report)
    elif c == "segmentations":
        from sslseg.report.figures import segmentations

        segmentations(args.ckpt, args.pets, args.rows, args.out, s, args.report)
    elif c == "plan":
        from sslseg.plan import print_plan

        print_plan(args.config, args.configfile, args.bench)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UserError as e:
        print(f"sslseg {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)
