"""The experiment grid, described once: named axes → the list of runs → their paths.

A downstream run is one point on the axes below. The Snakemake rules (their paths and
wildcards), the planner (its job counts) and the aggregation (its columns) all read this
module, and every result file carries its run's coordinates. Adding an axis is one `Axis`
entry here and one key under `grid:` in workflow/schemas/config.schema.yaml.

Standard library only: Snakemake parses the workflow in its own environment.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import itertools
import re
from pathlib import Path
from typing import Any

from sslseg.io import UserError

MODELS = Path(__file__).resolve().parent / "models"


@dataclasses.dataclass(frozen=True)
class Axis:
    name: str  # the coordinate: field of `Run`, key in metrics.json, column of runs.csv
    key: str  # its list under `grid:` in the config
    stage: str  # the first stage whose result it changes: model, pretrain, intermediate, finetune
    token: str  # how a value is written in paths (str.format of the value; budgets via `size_token`)
    omit: Any = None  # a value left out of paths (the axis's old implicit value: paths stay as they were)


AXES: tuple[Axis, ...] = (
    Axis("backbone", "backbones", "model", "{}"),
    Axis("objective", "objectives", "pretrain", "{}"),
    Axis("data", "pretrain_data", "pretrain", "{}"),
    Axis("pretrain", "pretrain_sizes", "pretrain", "{}"),
    Axis("intermediate", "intermediate", "intermediate", "i{:d}"),
    Axis("adaptation", "adaptations", "finetune", "{}"),
    Axis("labels", "labels", "finetune", "{}"),
    Axis("finetune", "finetune_sizes", "finetune", "n{}"),
    Axis("seed", "seeds", "finetune", "s{}"),
    # the UNet decoder's width multiplier (seed 004's 1x/2x/3x); 1 is left out of paths, so the
    # runs of grids without a decoder keep their paths. Objectives that pretrain a decoder
    # (DECODER = True: dep, ddep) carry it into their pretraining folder too (`pretrain_name`).
    Axis("decoder", "decoder_widths", "finetune", "w{}", omit=1),
)
NAMES = tuple(a.name for a in AXES)
DECODER_AXIS = next(a for a in AXES if a.name == "decoder")
SCRATCH = "scratch"  # the pretraining token of runs without pretraining (size 0)
NONE = "none"  # objective and data of runs without pretraining

# an axis with an `omit` value defaults to it, so code naming a run's coordinates keeps working
Run = dataclasses.make_dataclass("Run", [(a.name, Any) if a.omit is None else
                                         (a.name, Any, dataclasses.field(default=a.omit)) for a in AXES], frozen=True)
Run.__doc__ = "One downstream run: a value for every axis of `AXES`."


def size_token(value: int | str) -> str:
    """How a label budget is written in paths: a count as is (250 → `250`), a fraction of the
    pool with `pct` for `%` (`5%` → `5pct`), since `%` is special in Snakemake's and SLURM's
    file patterns."""
    return str(value).replace("%", "pct")


def _token(axis: Axis, value: Any) -> str:
    return axis.token.format(size_token(value) if axis.name == "finetune" else value)


def _tokens(run: Any, stage: str) -> list[str]:
    return [_token(a, v) for a in AXES if a.stage == stage and (v := getattr(run, a.name)) != a.omit]


def pretrain_name(run: Any) -> str:
    """`scratch`, or the pretraining's tokens, e.g. `simmim-random-45000`; an objective that
    pretrains a decoder adds its width where it is not 1 (`dep-random-45000-w2`)."""
    if not run.pretrain:
        return SCRATCH
    width = [DECODER_AXIS.token.format(run.decoder)] if has_decoder(run.objective) and run.decoder != 1 else []
    return "-".join(_tokens(run, "pretrain") + width)


def has_decoder(objective: str) -> bool:
    """Whether `objective` pretrains a decoder (its module sets `DECODER = True`), read from the source."""
    from sslseg.objectives import declares  # stdlib only: reads the objective's file

    return objective != NONE and declares(objective, "DECODER")


def pretrain_dir(run: Any) -> str | None:
    """Folder of the run's pretraining checkpoint (None: no pretraining), e.g. `viny/simmim-random-45000`."""
    return "/".join(["-".join(_tokens(run, "model")), pretrain_name(run)]) if run.pretrain else None


def intermediate_dir(run: Any) -> str | None:
    """Folder of the run's intermediate checkpoint (None: no intermediate step), e.g. `viny/scratch`.
    Its own axis (intermediate on) is implied; any further intermediate-stage axis is appended."""
    if not run.intermediate:
        return None
    extra = [t for a, t in zip([a for a in AXES if a.stage == "intermediate"], _tokens(run, "intermediate"))
             if a.name != "intermediate"]
    return "/".join(["-".join(_tokens(run, "model")), "-".join([pretrain_name(run), *extra])])


def run_dir(run: Any) -> str:
    """e.g. `viny/simmim-random-45000-i1/finetune-full-n250-s0`: backbone / init / downstream."""
    init = "-".join([pretrain_name(run), *_tokens(run, "intermediate")])
    return "/".join(["-".join(_tokens(run, "model")), init, "-".join(_tokens(run, "finetune"))])


STAGES = ("model", "pretrain", "intermediate", "finetune")


def coordinates(run: Any, upto: str = "finetune") -> dict:
    """The run's coordinates on the axes up to stage `upto`, JSON-ready (booleans as 0/1,
    as the tables read them): what a result file of that stage records about itself."""
    stages = STAGES[: STAGES.index(upto) + 1]
    out = {a.name: int(v) if isinstance(v := getattr(run, a.name), bool) else v for a in AXES if a.stage in stages}
    if upto != "model" and "decoder" not in out and has_decoder(run.objective):  # dep/ddep differ by width
        out["decoder"] = run.decoder
    return out


def runs(config: dict) -> list[Any]:
    """Every downstream run of the config's grid, in axis order (`config`: a whole config, or
    its `view`).

    Without pretraining (size 0) the objective and data axes have no meaning: those runs
    appear once, with objective and data `none`, whatever the lists hold; likewise a run with
    no decoder (neither a UNet head nor a decoder-pretraining objective) has decoder width 1.
    Pretraining an objective that masks patches on a backbone that cannot (a ResNet), or whose
    encoder comes from such an objective (DDeP), is left out (`skipped` says which), so one
    grid can hold a ResNet baseline beside pretrained ViTs.
    """
    grid = config["grid"]
    out: dict[Any, None] = {}
    for combo in itertools.product(*(list(dict.fromkeys(grid[a.key])) for a in AXES)):
        coords = dict(zip(NAMES, combo))
        if not coords["pretrain"]:
            coords.update(objective=NONE, data=NONE)
        elif _incompatible(coords["backbone"], coords["objective"], config):
            continue
        if not uses_decoder(config, coords["adaptation"], coords["objective"]):
            coords["decoder"] = 1  # a width without a decoder means nothing: one run, not one per width
        out.setdefault(Run(**coords))
    if len({run_dir(r) for r in out}) != len(out):  # an axis whose values are missing from the paths
        raise ValueError("two runs of the grid share a path: every axis needs a token in sslseg.grid.run_dir")
    return list(out)


def uses_decoder(config: dict, adaptation: str, objective: str) -> bool:
    """Whether a run has a UNet decoder whose width matters: its segmentation head is `unet`
    (finetune.head / probe.head), or its pretraining objective pretrains a decoder."""
    # (a grid alone, as the report rules pass it, has no heads: only the objective can tell)
    return config.get(adaptation, {}).get("head") == "unet" or has_decoder(objective)


def view(config: dict) -> dict:
    """The slice of a config that `runs` reads: the grid, the segmentation heads (a UNet makes
    the decoder width an axis) and the objectives' INIT settings (DDeP's encoder decides where it
    can run). What the report rules pass, so they list exactly the workflow's runs."""
    from sslseg.objectives import constant

    inits = {o: {k: config["objectives"][o][k]} for o in config["grid"]["objectives"]
             if (k := constant(o, "INIT")) and k in config["objectives"].get(o, {})}
    return {"grid": config["grid"], "objectives": inits,  # (another head than unet changes no run list)
            **{a: {"head": "unet" if config[a]["head"] == "unet" else "other"} for a in config["grid"]["adaptations"]}}


def first_run(config: dict, stage: str) -> Any | None:
    """The run whose `stage` settings stand for the grid's in a measurement (planner,
    benchmark): the first run that pretrains for "pretrain" (None if none does); for
    "finetune" the first fine-tuned one (else the first, a probe); else the first."""
    every = runs(config)
    if stage == "finetune":
        return next((r for r in every if r.adaptation == "finetune"), every[0] if every else None)
    return next((r for r in every if r.pretrain or stage != "pretrain"), None)


def skipped(config: dict) -> list[str]:
    """One line per (backbone, objective) pair of the grid that `runs` leaves out, and why."""
    grid = config["grid"]
    if not any(grid["pretrain_sizes"]):
        return []
    out = []
    for b in grid["backbones"]:
        for o in grid["objectives"]:
            if _incompatible(b, o):
                out.append(f"grid: no {o} pretraining on {b}: {o} masks patches, which {b} cannot (only ViTs can)")
            elif _incompatible(b, o, config):
                out.append(f"grid: no {o} pretraining on {b}: its encoder comes from "
                           f"{encoder_objective(config, o)}, which cannot pretrain {b}")
    from sslseg.objectives import constant

    for o in grid["objectives"]:  # a frozen encoder + a decoder that the head then drops: a repeat
        source = encoder_objective(config, o)
        if source and has_decoder(o) and "backbone." in (constant(o, "FREEZE") or []):
            for a in grid["adaptations"]:
                if config.get(a, {}).get("head") != "unet":
                    out.append(f"grid: {o}'s {a} runs drop its decoder ({a}.head is not unet), so they repeat "
                               f"{source}'s, whose frozen encoder they share; set {a}.head unet to compare decoders")
    return out


def _incompatible(backbone: str, objective: str, config: dict | None = None) -> bool:
    """Whether `objective` cannot pretrain on `backbone`: it masks patches and the backbone
    cannot, or it starts from another objective's checkpoint (`encoder_objective`) which cannot."""
    from sslseg.objectives import needs_mask  # stdlib only: reads the objective's file

    if needs_mask(objective) and not backbones().get(backbone, FLAGS)["accepts_mask"]:
        return True
    source = encoder_objective(config, objective) if config else None
    return source is not None and _incompatible(backbone, source)


def is_path(value: str) -> bool:
    """Whether a setting that names an objective or a file (objectives.ddep.encoder) names a file."""
    return "/" in value or value.endswith((".pt", ".pth", ".safetensors", ".bin"))


def encoder_objective(config: dict, objective: str) -> str | None:
    """The pretraining objective whose checkpoint `objective` starts from (its module's `INIT`
    names the settings key, e.g. DDeP's `encoder`), or None: none, or a file."""
    from sslseg.objectives import constant

    key = constant(objective, "INIT") if objective != NONE else None
    value = config.get("objectives", {}).get(objective, {}).get(key) if key else None
    return None if value is None or is_path(value) else value


def by_path(items: list[Any], path_of) -> dict[str, Any]:
    """{path: first item with that path}: what a rule's wildcard maps back to (runs share a
    pretraining or intermediate folder exactly when they share that checkpoint)."""
    out: dict[str, Any] = {}
    for item in items:
        path = path_of(item)
        if path is not None:
            out.setdefault(path, item)
    return out


def wildcard(paths) -> str:
    """A regex matching exactly these paths (a rule's wildcard constraint)."""
    return "|".join(re.escape(p) for p in sorted(paths)) or "(?!)"


# class attributes of a family, and their defaults; batch_norm: cannot train on a batch of one image
FLAGS = {"accepts_mask": False, "dense_features": True, "batch_norm": False}


@functools.cache
def backbones() -> dict[str, dict[str, bool]]:
    """{backbone preset: {"accepts_mask": takes a patch mask, "dense_features": gives per-location
    maps, "batch_norm": has BatchNorm layers}}, read from the `PRESETS` dicts and those class attributes of the family modules in
    sslseg/models/ (parsed once, not imported)."""
    out: dict[str, dict[str, bool]] = {}
    for path in sorted(MODELS.glob("*.py")):
        tree = ast.parse(path.read_text())
        names, flags = [], dict(FLAGS)
        for node in ast.walk(tree):
            target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
            name = getattr(target, "id", None)
            if name == "PRESETS" and isinstance(node.value, ast.Dict):
                names = [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
            elif name in FLAGS and isinstance(node.value, ast.Constant):
                flags[name] = bool(node.value.value)
        out.update({n: flags for n in names})
    return out


def check(config: dict) -> None:
    """Grid checks the schema cannot express; raises UserError with one line naming the key."""
    from sslseg.objectives import available, pretraining  # stdlib only: reads the objective files

    known = pretraining()
    for name in config["grid"]["objectives"]:
        if name not in known:
            why = "is not a pretraining objective" if name in available() else "is unknown"
            raise UserError(f"grid.objectives: {name!r} {why}; available: {', '.join(known)} "
                            "(a new one is a file sslseg/objectives/<name>.py declaring PRETRAINING = True)")
        if name not in config["objectives"]:
            raise UserError(f"objectives.{name}: missing; give the settings of objective {name!r} "
                            "(an empty mapping if it has none)")
        clash = set(config["objectives"][name]) & {*config["pretrain"], "stage", "objective", "model", "device",
                                                    *config["train"]}
        if clash:
            raise UserError(f"objectives.{name}: {', '.join(sorted(clash))} would override the pretraining "
                            "recipe of the same name; rename the objective's setting")
    for name in config["objectives"]:
        if name not in known:
            raise UserError(f"objectives.{name}: no such objective; available: {', '.join(known)}")
    presets = backbones()
    for name in config["grid"]["backbones"]:
        if name not in presets:
            raise UserError(f"grid.backbones: unknown backbone {name!r}; available: {', '.join(presets)}")
        if "probe" in config["grid"]["adaptations"] and not presets[name]["dense_features"]:
            raise UserError(f"grid.adaptations: a probe needs per-location features, which backbone {name!r} does not "
                            "give (dense_features = False); drop probe or that backbone")
