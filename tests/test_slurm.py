"""The workflow on a real (one-node, throwaway) SLURM cluster.

Runs `snakemake --profile workflow/profiles/slurm` against slurmctld/slurmd
started by `tests/slurm_cluster.py`, so that the profile, the executor plugin
and the rules' `resources:` are exercised through real sbatch submissions.
Those tests (marked `slurm`) need root + apt (installs slurm-wlm and munge when
missing), else skip; the dry-run tests of what each rule asks for need neither.
"""

import csv
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import copy_workflow
from slurm_cluster import FEATURE, OTHER_PARTITION, slurm_cluster  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "workflow" / "profiles" / "slurm"
TINY = "workflow/configs/tiny.yaml"
METRICS = ("pixel_acc", "miou")
SLURM_KEYS = ("slurm_partition", "constraint", "cpus_per_gpu", "slurm_extra")
# The SLURM plugin's per-rule keys, set for the fine-tunes only (tiny.yaml: mem_mb 1000, gpu 1).
SITE = {"resources": {"finetune": {"slurm_partition": OTHER_PARTITION, "constraint": FEATURE, "cpus_per_gpu": 2,
                                   "slurm_extra": "--nice=7"}}}

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


def job_resources(output: str) -> dict[str, list[dict[str, str]]]:
    """{rule: each job's resources} as a dry run lists them (`    resources: k=v, k=v`)."""
    jobs: dict[str, list[dict[str, str]]] = {}
    rule = None
    for line in output.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            rule = m.group(1)
        elif rule and line.startswith("    resources: "):
            items = line.removeprefix("    resources: ").split(", ")
            jobs.setdefault(rule, []).append(dict(item.split("=", 1) for item in items))
            rule = None
    return jobs


def dry_run(tmp_path: Path, *args: str) -> dict[str, list[dict[str, str]]]:
    """The tiny study's jobs and their resources, planned from the repository's Snakefile."""
    run = snakemake(tmp_path, "-n", "--cores", "2", "-s", str(REPO / "Snakefile"), *args, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
    jobs = job_resources(run.stdout)
    assert jobs.get("finetune") and jobs.get("pretrain") and jobs.get("pack_pets"), run.stdout[-3000:]
    return jobs


def test_rules_pass_the_slurm_keys_that_are_set_and_no_others(tmp_path):
    """resources.<rule>.slurm_partition, constraint, cpus_per_gpu, slurm_extra reach that rule's jobs (the
    plugin turns them into -p, -C, --cpus-per-gpu and verbatim options); unset or empty ones are not
    passed at all (an empty constraint would still become `-C ''`)."""
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(SITE))
    jobs = dry_run(tmp_path, "--configfile", str(REPO / TINY), "site.yaml")
    want = {k: str(v) for k, v in SITE["resources"]["finetune"].items()}
    for r in jobs["finetune"]:
        assert {k: r.get(k) for k in SLURM_KEYS} == want, r
        assert r["mem_mb"] == "1000" and r["gpu"] == "1"
    for rule, resources in jobs.items():
        if rule not in ("finetune", "probe"):  # the rules of resources.finetune
            assert not [k for r in resources for k in SLURM_KEYS if k in r], (rule, resources)


def test_mem_mb_grows_with_the_retry_attempt(tmp_path):
    """A job killed for memory is resubmitted (the profile's `retries`) with attempt × mem_mb."""
    first = dry_run(tmp_path, "--configfile", str(REPO / TINY))
    third = dry_run(tmp_path, "--configfile", str(REPO / TINY), "--attempt", "3")
    for rule in ("pack_pets", "pretrain", "finetune"):
        assert {r["mem_mb"] for r in first[rule]} == {"1000"}, rule  # tiny.yaml's mem_mb
        assert {r["mem_mb"] for r in third[rule]} == {"3000"}, rule
        assert {r["runtime"] for r in third[rule]} == {r["runtime"] for r in first[rule]}, rule


def test_profile_requeues_and_retries():
    """Preempted or node-lost jobs are requeued by SLURM and resume from their checkpoint; a failed
    one (time limit, memory) is resubmitted once, with more memory."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert profile["slurm-requeue"] is True and profile["retries"] >= 1


@pytest.mark.slurm
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


PROBE_SNAKEFILE = """
configfile: f"{workflow.basedir}/config.yaml"


include: "workflow/rules/common.smk"


rule all:
    input:
        "out/probe.txt",


rule probe:
    output:
        "out/probe.txt",
    threads: 1
    resources:
        **res("finetune"),
    shell:
        "echo job=$SLURM_JOB_ID mem={resources.mem_mb} >> out/attempts.txt;"
        " test {resources.mem_mb} -gt 1000; echo ok > {output}"
"""


@pytest.mark.slurm
def test_rule_resources_reach_sbatch_and_a_retry_gets_more_memory(slurm_cluster, tmp_path):
    """The workflow's own `res()` through the profile: partition, constraint, cpus per GPU and extra
    options on the sbatch call; the job fails on its first attempt (mem_mb 1000) and the retry
    asks for twice the memory."""
    wf = copy_workflow(tmp_path / "wf")
    (wf / "Snakefile").write_text(PROBE_SNAKEFILE)
    (wf / "site.yaml").write_text(yaml.safe_dump(SITE))
    before = {j["JobId"] for j in slurm_cluster.jobs()}
    run = snakemake(wf, "--profile", str(PROFILE), "--configfile", TINY, "site.yaml", "--cores", "2",
                    env=slurm_cluster.env, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
    new = [j for j in slurm_cluster.jobs() if j["JobId"] not in before]
    assert [(j["Comment"], j["JobState"]) for j in new] == [("rule_probe", "FAILED"), ("rule_probe", "COMPLETED")]
    assert [j["MinMemoryNode"] for j in new] == ["1000M", "2000M"]  # --mem 1000 x attempt
    for j in new:
        assert j["Partition"] == OTHER_PARTITION and j["Features"] == FEATURE, j  # -p, -C
        assert j["Nice"] == "7", j  # slurm_extra
        assert j["Requeue"] == "1", j  # the profile's slurm-requeue (the test cluster's default is 0)
        assert j["TresPerJob"] == "gres:gpu:1" and "gpu:2" in j.get("CpusPerTres", ""), j  # --cpus-per-gpu=2
    lines = (wf / "out" / "attempts.txt").read_text().split()
    assert [ln for ln in lines if ln.startswith("mem=")] == ["mem=1000", "mem=2000"]


@pytest.mark.slurm
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
