"""The workflow on a real (one-node, throwaway) SLURM cluster.

Runs `snakemake --profile workflow/profiles/slurm` against slurmctld/slurmd
started by `tests/slurm_cluster.py`, so that the profile, the executor plugin
and the rules' `resources:` are exercised through real sbatch submissions.
Needs root + apt (installs slurm-wlm and munge when missing), else skips.
"""

import csv
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import copy_workflow
from slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "workflow" / "profiles" / "slurm"
TINY = "workflow/configs/tiny.yaml"
METRICS = ("pixel_acc", "miou")

pytestmark = pytest.mark.slurm

SMOKE_SNAKEFILE = """
rule all:
    input: "out/gpu.txt"

rule cpu_step:
    output: "out/cpu.txt"
    threads: 1
    resources: mem_mb=200, runtime=2
    shell: "echo job=$SLURM_JOB_ID > {output}"

rule gpu_step:
    input: "out/cpu.txt"
    output: "out/gpu.txt"
    threads: 1
    resources: gpu=1, mem_mb=500, runtime=5
    shell: "cat {input} > {output}; echo job=$SLURM_JOB_ID cuda=$CUDA_VISIBLE_DEVICES >> {output}"
"""


def snakemake(workdir: Path, *args: str, env: dict | None = None, timeout: int = 600):
    """Run `python -m snakemake` in workdir; return the CompletedProcess (output in .stdout)."""
    env = dict(env or os.environ)
    # Rules call `python ...`: it must be this interpreter, also inside SLURM jobs
    # (sbatch --export=ALL hands them this PATH).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)


def remote_rules(output: str) -> Counter:
    """Rule names of the jobs Snakemake submitted: `rule X:` (local ones say `localrule X:`)."""
    return Counter(re.findall(r"^rule (\w+):$", output, flags=re.M))


def check_jobs(jobs: list[dict], output: str) -> None:
    """The cluster ran exactly the jobs Snakemake submitted, and all COMPLETED."""
    expected = remote_rules(output)
    assert jobs, "no job reached the cluster"
    # the plugin puts `rule_<name>[_wildcards_...]` in the job comment
    comments = [j.get("Comment", "") for j in jobs]
    seen = Counter(re.sub(r"^rule_(\w+?)(_wildcards_.*)?$", r"\1", c) for c in comments)
    assert seen == expected, output[-3000:]
    bad = [(j["JobId"], c, j["JobState"]) for j, c in zip(jobs, comments)
           if j["JobState"] != "COMPLETED"]
    assert not bad, bad


def test_smoke_profile_roundtrip(slurm_cluster, tmp_path):
    """A 2-rule workflow goes through sbatch; `gpu=1` becomes `--gpus=1` and runs on the fake GPU."""
    (tmp_path / "Snakefile").write_text(SMOKE_SNAKEFILE)
    before = {j["JobId"] for j in slurm_cluster.jobs()}  # the cluster is shared by the session
    run = snakemake(tmp_path, "--profile", str(PROFILE), "--cores", "2", env=slurm_cluster.env,
                    timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
    new = [j for j in slurm_cluster.jobs() if j["JobId"] not in before]
    check_jobs(new, run.stdout)
    by_rule = {j["Comment"]: j for j in new}
    assert by_rule["rule_gpu_step"]["TresPerJob"] == "gres:gpu:1"  # --gpus=1
    assert by_rule["rule_gpu_step"]["MinMemoryNode"] == "500M"      # --mem 500
    assert by_rule["rule_gpu_step"]["TimeLimit"] == "00:05:00"      # -t 5
    assert "TresPerJob" not in by_rule["rule_cpu_step"]  # no gpu, no gres
    lines = (tmp_path / "out" / "gpu.txt").read_text().splitlines()
    assert lines == [f"job={by_rule['rule_cpu_step']['JobId']}",
                     f"job={by_rule['rule_gpu_step']['JobId']} cuda=0"], lines


def read_runs(workdir: Path) -> list[dict]:
    with open(workdir / "results" / "tiny" / "report" / "runs.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.skipif(not (REPO / TINY).exists(), reason=f"{TINY} not written yet")
def test_tiny_workflow_on_slurm_matches_local(slurm_cluster, tiny_run, tmp_path):
    """The tiny study through sbatch: every job COMPLETED, and the same metrics as a local run."""
    on_slurm = copy_workflow(tmp_path / "slurm")
    before = {j["JobId"] for j in slurm_cluster.jobs()}
    run = snakemake(on_slurm, "--profile", "workflow/profiles/slurm", "--configfile", TINY,
                    "--cores", "2", env=slurm_cluster.env, timeout=1800)
    assert run.returncode == 0, run.stdout[-5000:]
    check_jobs([j for j in slurm_cluster.jobs() if j["JobId"] not in before], run.stdout)

    local = tiny_run  # the same config run locally (session fixture)
    # CPU runs are deterministic from the seeds, wherever they ran
    slurm_rows, local_rows = read_runs(on_slurm), read_runs(local)
    assert len(slurm_rows) == len(local_rows) > 0
    for i, (s, l) in enumerate(zip(slurm_rows, local_rows)):
        for m in METRICS:
            assert float(s[m]) == pytest.approx(float(l[m]), abs=1e-6), (i, m, s, l)
