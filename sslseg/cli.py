"""Command line: `python -m sslseg <command> --flag value ...`, one command per workflow rule.

A rule, its sub-command and its function share one name, so a stage's code is one hop from
its rule: the table below maps each to `module:function`. Flags come from the function's
signature (`--out`, `--settings`, ...): dict parameters take JSON, list parameters take
several values. Stage settings arrive as one JSON object, the slice of the validated config
that the rule passes as `params`, so there is no second set of defaults here to drift from
the schema. Only the chosen command's module is imported.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import typing
from typing import Callable

from sslseg.io import Output, UserError, check_writable

COMMANDS: dict[str, str] = {
    "demo_data": "sslseg.data.demo:demo_data",
    "extract_intel": "sslseg.data.sources:extract_intel",
    "pack_pets": "sslseg.stages.data:pack_pets",
    "pack_pretrain": "sslseg.stages.data:pack_pretrain",
    "pack_intermediate": "sslseg.stages.data:pack_intermediate",
    "splits": "sslseg.stages.data:splits",
    "subset": "sslseg.stages.data:subset",
    "pretrain": "sslseg.stages.train:pretrain",
    "intermediate": "sslseg.stages.train:intermediate",
    "intermediate_eval": "sslseg.stages.evaluate:intermediate_eval",
    "weak_labels": "sslseg.stages.labels:weak_labels",
    "finetune": "sslseg.stages.train:finetune",
    "probe": "sslseg.stages.train:probe",
    "evaluate": "sslseg.stages.evaluate:evaluate",
    "aggregate": "sslseg.report.tables:aggregate",
    "intermediate_accuracies": "sslseg.report.tables:intermediate_accuracies",
    "tables": "sslseg.report.tables:tables",
    "label_quality": "sslseg.report.tables:label_quality",
    "label_figures": "sslseg.report.figures:label_figures",
    "label_examples": "sslseg.report.labels:label_examples",
    "figures": "sslseg.report.figures:figures",
    "learning_curves": "sslseg.report.curves:learning_curves",
    "reconstructions": "sslseg.report.figures:reconstructions",
    "segmentations": "sslseg.report.figures:segmentations",
    "published": "sslseg.report.published:published",
    # not rules: tools for users
    "evaluate_folder": "sslseg.stages.folder:evaluate_folder",
    "predict_masks": "sslseg.stages.folder:predict_masks",
    "plan": "sslseg.plan:print_plan",
}


def resolve(command: str) -> Callable:
    module, name = COMMANDS[command].split(":")
    return getattr(importlib.import_module(module), name)


def _json_object(flag: str) -> Callable[[str], dict]:
    def parse(text: str) -> dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"not valid JSON ({e})") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError("expected a JSON object")
        return value
    parse.__name__ = f"{flag} JSON"
    return parse


def _at_least_one(text: str) -> int:
    value = int(text)  # (argparse turns a ValueError into "invalid ... value")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a count of at least 1")
    return value


_at_least_one.__name__ = "count"  # argparse's "invalid count value: 'two'"


def command_parser(command: str, func: Callable) -> argparse.ArgumentParser:
    """A parser whose flags are `func`'s parameters: required unless they have a default."""
    doc = inspect.getdoc(func) or ""
    p = argparse.ArgumentParser(prog=f"python -m sslseg {command}", description=doc.split("\n\n")[0])
    hints = typing.get_type_hints(func, include_extras=True)
    for name, param in inspect.signature(func).parameters.items():
        hint = hints.get(name, str)
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint) if args and type(None) in args else hint
        kw: dict = {"dest": name}
        if base is dict:
            kw["type"] = _json_object(name)
        elif typing.get_origin(base) is list:
            kw["nargs"] = "+"
        elif name == "threads":  # torch.set_num_threads refuses 0 with a traceback
            kw["type"] = _at_least_one
        elif base in (int, float):
            kw["type"] = base
        if param.default is inspect.Parameter.empty:
            kw["required"] = True
        else:
            kw["default"] = param.default
        p.add_argument("--" + name.replace("_", "-"), **kw)
    return p


def outputs(func: Callable, args: dict) -> list[str]:
    """The values of `func`'s parameters annotated `sslseg.io.Output` (its output paths)."""
    hints = typing.get_type_hints(func, include_extras=True)
    return [args[n] for n, h in hints.items() if args.get(n) and (h == Output or Output in typing.get_args(h))]


def main(argv: list[str] | None = None, warm: bool = True) -> None:
    """Run a command. `warm`: hand it to the warm-start server when the workflow asks for one
    (sslseg.warm; False in the server's own children)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv:
        argv[0] = argv[0].replace("-", "_") if not argv[0].startswith("-") else argv[0]  # pack-pets = pack_pets
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {c:<{width}}  {COMMANDS[c]}" for c in COMMANDS]
        print(f"usage: python -m sslseg <command> [--help | flags]\n\n{__doc__.splitlines()[0]}\n\ncommands "
              "(module:function; `<command> --help` for its flags):\n" + "\n".join(lines),
              file=sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"sslseg: error: unknown command {argv[0]!r}", file=sys.stderr)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    command = argv[0]
    # The job's device, before anything can start CUDA (and before the warm hand-off, so the
    # job's own process holds the slot and its child gets CUDA_VISIBLE_DEVICES): sslseg.gpus.
    if "--help" not in argv and "-h" not in argv:
        from sslseg import gpus

        gpus.claim(command)
    if warm and "--help" not in argv and "-h" not in argv:
        from sslseg import warm as warm_start

        if warm_start.wanted():
            status = warm_start.run(argv)
            if status is not None:
                sys.exit(status)
    func = resolve(command)
    args = vars(command_parser(command, func).parse_args(argv[1:]))
    try:
        for path in outputs(func, args):  # before any work: a read-only folder fails in a second
            check_writable(path)
        func(**args)
    except UserError as e:
        print(f"sslseg {command}: error: {e}", file=sys.stderr)
        sys.exit(2)
