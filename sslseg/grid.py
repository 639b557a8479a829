"""The experiment grid, described once: named axes → the list of runs → their paths.

A downstream run is one point on the axes below. The Snakemake rules (their paths and
wildcards), the planner (its job counts) and the aggregation (its columns) all read this
module, and every result file carries its run's coordinates. Adding an axis is one `Axis`
entry here and one key under `grid:` in workflow/schemas/config.schema.yaml.

Standard library only: Snakemake parses the workflow in its own environment.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterator

from sslseg.io import UserError

@dataclasses.dataclass(frozen=True)
class Axis:
    name: str  # the coordinate: field of `Run`, key in metrics.json, column of runs.csv
    key: str  # its list under `grid:` in the config
    stage: str  # the first stage whose result it changes: model, pretrain, intermediate, finetune
    token: str  # how a value is written in paths (str.format of the value)


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
)
NAMES = tuple(a.name for a in AXES)
SCRATCH = "scratch"  # the pretraining token of runs without pretraining (size 0)
NONE = "none"  # objective and data of runs without pretraining

Run = dataclasses.make_dataclass("Run", [(a.name, Any) for a in AXES], frozen=True)
Run.__doc__ = "One downstream run: a value for every axis of `AXES`."


def _tokens(run: Any, stage: str) -> list[str]:
    return [a.token.format(getattr(run, a.name)) for a in AXES if a.stage == stage]


def pretrain_name(run: Any) -> str:
    """`scratch`, or the pretraining's tokens, e.g. `simmim-random-45000`."""
    return "-".join(_tokens(run, "pretrain")) if run.pretrain else SCRATCH


def pretrain_dir(run: Any) -> str | None:
    """Folder of the run's pretraining checkpoint (None: no pretraining), e.g. `viny/simmim-random-45000`."""
    return f"{run.backbone}/{pretrain_name(run)}" if run.pretrain else None


def intermediate_dir(run: Any) -> str | None:
    """Folder of the run's intermediate checkpoint (None: no intermediate step), e.g. `viny/scratch`."""
    return f"{run.backbone}/{pretrain_name(run)}" if run.intermediate else None


def run_dir(run: Any) -> str:
    """e.g. `viny/simmim-random-45000-i1/finetune-full-n250-s0`: backbone / init / downstream."""
    init = "-".join([pretrain_name(run), *_tokens(run, "intermediate")])
    return "/".join(["-".join(_tokens(run, "model")), init, "-".join(_tokens(run, "finetune"))])


STAGES = ("model", "pretrain", "intermediate", "finetune")


def coordinates(run: Any, upto: str = "finetune") -> dict:
    """The run's coordinates on the axes up to stage `upto`, JSON-ready (booleans as 0/1,
    as the tables read them): what a result file of that stage records about itself."""
    stages = STAGES[: STAGES.index(upto) + 1]
    return {a.name: int(v) if isinstance(v := getattr(run, a.name), bool) else v for a in AXES if a.stage in stages}


def runs(config: dict) -> list[Any]:
    """Every downstream run of the config's grid, in axis order.

    Without pretraining (size 0) the objective and data axes have no meaning: those runs
    appear once, with objective and data `none`, whatever the lists hold.
    """
    grid = config["grid"]
    values = [list(dict.fromkeys(grid[a.key])) for a in AXES]
    seen: dict[Any, None] = {}
    for combo in _product(values):
        coords = dict(zip(NAMES, combo))
        if not coords["pretrain"]:
            coords.update(objective=NONE, data=NONE)
        seen.setdefault(Run(**coords))
    return list(seen)


def _product(values: list[list]) -> Iterator[tuple]:
    if not values:
        yield ()
        return
    for v in values[0]:
        for rest in _product(values[1:]):
            yield (v, *rest)


def by_path(items: list[Any], path_of) -> dict[str, Any]:
    """{path: first item with that path}: what a rule's wildcard maps back to."""
    out: dict[str, Any] = {}
    for item in items:
        path = path_of(item)
        if path is not None:
            out.setdefault(path, item)
    return out


def wildcard(paths) -> str:
    """A regex matching exactly these paths (a rule's wildcard constraint)."""
    return "|".join(re.escape(p) for p in sorted(paths)) or "(?!)"


def check(config: dict) -> None:
    """Grid checks the schema cannot express; raises UserError with one line naming the key."""
    from sslseg.objectives import pretraining  # stdlib only: reads the objective files, imports none

    known = pretraining()
    for name in config["grid"]["objectives"]:
        if name not in known:
            raise UserError(f"grid.objectives: unknown objective {name!r}; available: {', '.join(known)} "
                            "(a new one is a file sslseg/objectives/<name>.py declaring PRETRAINING = True)")
    for name in config["objectives"]:
        if name not in known:
            raise UserError(f"objectives.{name}: no such objective; available: {', '.join(known)}")
