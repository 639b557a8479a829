"""Atomic artifact writes and provenance sidecars.

Every artifact is written to a temporary name in its own directory and renamed,
so an interrupted job never leaves a half file that Snakemake would trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import sslseg


class UserError(Exception):
    """A problem with the user's input: printed as one line, no traceback."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A writer killed by SIGKILL leaves its temp file; Snakemake never runs two jobs for
    # one output, so any earlier temp of this target is stale (and may be gigabytes).
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e}); delete it and rerun the stage that writes it") from None


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def git_commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def provenance(device: str | None = None) -> dict:
    """Versions and host facts recorded beside every artifact."""
    import torch

    try:
        import timm

        timm_version = timm.__version__
    except ImportError:  # timm is only needed by model stages
        timm_version = None
    return {
        "sslseg": sslseg.__version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "timm": timm_version,
        "host": platform.node(),
        "device": device,
        "argv": sys.argv,
    }


def write_sidecar(artifact: str | os.PathLike, stage: str, settings: dict, started: float, **extra: Any) -> None:
    """Write `<artifact>.json`: the stage's settings, seeds, versions, device and wall time."""
    meta = {
        "stage": stage,
        "artifact": str(artifact),
        "settings": settings,
        "wall_time_s": round(time.time() - started, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **provenance(extra.pop("device", None)),
        **extra,
    }
    write_json(f"{artifact}.json", meta)
