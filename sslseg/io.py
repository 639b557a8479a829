"""Atomic artifact writes and provenance sidecars.

Every artifact is written to a temporary name in its own directory and renamed,
so an interrupted job never leaves a half file that Snakemake would trust.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Iterator

import sslseg


class UserError(Exception):
    """A problem with the user's input: printed as one line, no traceback."""


Output = Annotated[str, "output"]
"""A command's output path: `python -m sslseg` checks that it can be written before any work."""


def _file_mode() -> int:
    # mkstemp creates 0600 files and the rename keeps that; a new artifact should get what the
    # user's umask gives any new file (0644 under 022), so collaborators can read the results.
    # Reading the umask means setting it for an instant; sslseg writes files from one thread.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def check_writable(path: str | os.PathLike) -> None:
    """Raise UserError (one line naming `path`) unless `path` can be created or replaced."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"{path}: cannot write here, {folder} is a file, not a folder; choose another output path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{path}: cannot write here, {folder} is not writable; choose another output path")


def _write_error(path: Path, e: OSError) -> UserError:
    return UserError(f"{path}: cannot write ({e.strerror or e}); check the folder's permissions and free space")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` on success.

    The artifact gets the permissions of any new file (umask), and a failure to create,
    write or rename it is a UserError naming `path`, not the random temp name."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A writer killed by SIGKILL leaves its temp file; Snakemake never runs two jobs for
        # one output, so any earlier temp of this target is stale (and may be gigabytes).
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        try:
            yield Path(tmp)
            os.chmod(tmp, _file_mode())
            os.replace(tmp, path)
        except OSError as e:
            # Only errors of the write itself are renamed; a bad input read inside the block
            # keeps its own message.
            full = "No space left on device" in str(e) or "Disk quota exceeded" in str(e)  # h5py: no errno
            if e.filename in (tmp, str(path)) or e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) or full:
                raise _write_error(path, e) from None
            raise
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
