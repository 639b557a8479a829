"""Objectives by name: each `sslseg/objectives/<name>.py` is one objective.

A module there provides `build(settings: dict) -> nn.Module` (the module's
`forward(batch, gen)` returns `(loss, outputs)`) and a constant `PRETRAINING`
(True for a self-supervised pretraining objective). Optional literal constants the workflow
reads from the source: `NEEDS_MASK` (masks patches: ViTs only), `DECODER` (pretrains a
decoder, so its pretraining depends on the decoder width), `FREEZE` (parameter-name prefixes
it never trains) and `INIT` (the settings key naming the checkpoint it starts from). An optional
method `draw(batch, gen) -> batch` adds the forward's random inputs (masks, noise) to the batch
first: sslseg.train.train_step calls it outside a compiled step, which a draw taking a
generator would split into several graphs. Adding a file is all it takes: there is no table
to edit. This file imports only the standard library, so the workflow can list objectives
without torch.
"""

from __future__ import annotations

import ast
import functools
import importlib
from pathlib import Path
from typing import Any

_HERE = Path(__file__).parent

def available() -> list[str]:
    """Every objective module of the package: `<name>.py` not starting with `_`."""
    return sorted(p.stem for p in _HERE.glob("*.py") if not p.name.startswith("_"))


def pretraining() -> list[str]:
    """The objectives whose module sets `PRETRAINING = True`, read from the source (no import)."""
    return [name for name in available() if _constant(_HERE / f"{name}.py", "PRETRAINING") is True]


def needs_mask(name: str) -> bool:
    """Whether objective `name` masks patches (`NEEDS_MASK = True`), read from the source."""
    return declares(name, "NEEDS_MASK")


def declares(name: str, flag: str) -> bool:
    """Whether objective `name`'s module sets `flag = True` (e.g. DECODER: it pretrains a
    decoder), read from the source without importing it."""
    return constant(name, flag) is True


def constant(name: str, key: str) -> Any:
    """A literal module constant of objective `name` (None if absent), e.g. FREEZE: the
    parameter-name prefixes the objective never trains (DDeP's frozen encoder)."""
    path = _HERE / f"{name}.py"
    return _constant(path, key) if path.exists() else None


def build_objective(name: str, settings: dict) -> Any:
    """The nn.Module of objective `name`, from its complete settings (schema defaults filled)."""
    if name not in available():
        from sslseg.io import UserError

        raise UserError(f"grid.objectives: unknown objective {name!r}; available: {', '.join(available())}")
    return importlib.import_module(f"{__name__}.{name}").build(settings)


@functools.cache
def _constant(path: Path, name: str) -> Any:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                return None
    return None

