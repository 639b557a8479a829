"""Shared fixtures: the real samples in ../shared/data and a copy of the workflow in tmp."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
WORKFLOW_FILES = ["Snakefile", "config.yaml", "workflow", "sslseg", "envs"]


def need_shared() -> Path:
    if not (SHARED / "oxford-iiit-pet").is_dir():
        pytest.skip(f"{SHARED} (the real data samples) is not beside the project")
    return SHARED


@pytest.fixture
def pets_sample(tmp_path: Path) -> Path:
    """A 24-pair Oxford-IIIT Pet folder in the official layout, from the real samples."""
    src = need_shared() / "oxford-iiit-pet"
    dst = tmp_path / "oxford-iiit-pet"
    (dst / "images").mkdir(parents=True)
    (dst / "annotations" / "trimaps").mkdir(parents=True)
    for split, n in (("trainval", 16), ("test", 8)):
        lines = (src / "annotations" / f"{split}.txt").read_text().splitlines()[:n]
        (dst / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
        for line in lines:
            name = line.split()[0]
            shutil.copy(src / "images" / f"{name}.jpg", dst / "images")
            shutil.copy(src / "annotations" / "trimaps" / f"{name}.png", dst / "annotations" / "trimaps")
    return dst


def copy_workflow(dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__", ".snakemake", "results"))
        else:
            shutil.copy(src, dst / name)
    return dst


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900,
              umask: int | None = None) -> subprocess.CompletedProcess:
    """`python -m snakemake ARGS` in workdir with this interpreter, its venv NOT on PATH: the rules
    must find the package through the interpreter running Snakemake, as for a user who did not
    activate the venv. `umask`: the file-creation mask the run starts with."""
    bindir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != bindir)
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=None if umask is None else lambda: os.umask(umask))
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """{rule: count} of what `snakemake -n` would run."""
    proc = snakemake(workdir, "-n", "--cores", "2", *args)
    counts: dict[str, int] = {}
    table = proc.stdout.split("Job stats:")[-1] if "Job stats:" in proc.stdout else ""
    for line in table.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) not in ("total", "job"):
            counts[m.group(1)] = int(m.group(2))
    return counts


TINY = ["--configfile", "workflow/configs/tiny.yaml"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One real local run of the whole DAG on the tiny config, in a copy of the workflow."""
    wf = copy_workflow(tmp_path_factory.mktemp("wf"))
    snakemake(wf, "--cores", "2", *TINY, umask=0o022)  # test_workflow checks the artifacts' modes
    return wf
