"""Workflow conventions: snakefmt, a workflow Snakemake can read without the ML stack, rule =
CLI sub-command = function, benchmarks on GPU rules, --directory, a venv that is not activated."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY, planned_jobs, snakemake

RULE_FILES = sorted((ROOT / "workflow" / "rules").glob("*.smk"))

# Loaded into Snakemake's process through PYTHONPATH: any import of the ML stack made by the
# Snakefile, a rule file or an sslseg module while the workflow is read fails. (The SLURM
# executor plugin itself imports pandas, so the modules cannot simply be made unimportable.)
BLOCKER = '''
import builtins, sys
BLOCKED = {"numpy", "torch", "PIL", "h5py", "pandas", "timm", "torchvision", "matplotlib", "seaborn", "tqdm"}
_real = builtins.__import__
def _guarded(name, globals=None, locals=None, fromlist=(), level=0):
    try:
        caller = sys._getframe(1).f_code.co_filename
    except ValueError:
        caller = ""
    workflow = caller.endswith((".smk", "Snakefile")) or "/sslseg/" in caller
    if level == 0 and workflow and name.split(".")[0] in BLOCKED:
        raise ImportError(f"{caller} imports {name}, which Snakemake's environment may not have")
    return _real(name, globals, locals, fromlist, level)
builtins.__import__ = _guarded
'''


def test_workflow_files_are_snakefmt_clean():
    snakefmt = Path(sys.executable).parent / "snakefmt"
    proc = subprocess.run([str(snakefmt), "--check", "Snakefile", "workflow"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflow_is_read_with_only_snakemake_and_the_standard_library(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", *TINY], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "finetune" in proc.stdout
    # and the blocker works: a workflow that imports numpy while being read is refused
    (tmp_path / "Snakefile").write_text('import numpy\nrule all:\n    output: "x"\n    shell: "touch {output}"\n')
    bad = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "imports numpy" in bad.stdout + bad.stderr


def _rules() -> dict[str, str]:
    """{rule name: its text} of every rule in the rule files."""
    rules = {}
    for f in RULE_FILES:
        for m in re.finditer(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", f.read_text(), flags=re.M | re.S):
            rules[m.group(1)] = m.group(2)
    return rules


def test_rule_name_is_the_cli_command_and_the_function_name():
    from sslseg.cli import COMMANDS, resolve

    rules = _rules()
    assert len(rules) >= 15
    for name, body in rules.items():
        assert name in COMMANDS, f"rule {name} has no `python -m sslseg {name}`"
        assert f"python -m sslseg {name} " in body, f"rule {name} does not call its own sub-command"
        assert resolve(name).__name__ == name, f"{COMMANDS[name]} is not named {name}"
        flags = set(re.findall(r" --([a-z-]+)", body))
        params = {p.replace("_", "-") for p in inspect.signature(resolve(name)).parameters}
        assert flags <= params, f"rule {name} passes {flags - params}, which {COMMANDS[name]} does not take"


def test_every_rule_that_may_ask_for_a_gpu_has_a_benchmark():
    from sslseg.config import load_config

    resources = load_config(ROOT / "config.yaml")["resources"]
    gpu = {k for k, r in resources.items() if r["gpu"]}
    assert gpu >= {"pretrain", "finetune"}  # the default config: training and evaluation ask for a GPU
    for name, body in _rules().items():
        entries = set(re.findall(r'\*\*res\("(\w+)"\)', body))
        if entries & gpu:
            assert "benchmark:" in body, f"rule {name} can run on a GPU but has no benchmark:"


def test_workflow_runs_from_another_directory(tmp_path):
    """Code inputs and the package are found from the Snakefile's folder, not the working one."""
    jobs = planned_jobs(tmp_path, "-s", str(ROOT / "Snakefile"), "--configfile", str(ROOT / TINY[1]))
    assert jobs["finetune"] == 16 and jobs["pretrain"] == 1


@pytest.mark.slow
def test_rules_run_with_a_venv_that_is_not_activated(tmp_path):
    """PATH without the venv: the rules still find torch, through the interpreter running Snakemake."""
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(sys.executable).parent != Path(p))
    target = "results/tiny/splits/test.txt"
    proc = subprocess.run([sys.executable, "-m", "snakemake", target, "--cores", "1", "-d", str(tmp_path), "-s",
                           str(ROOT / "Snakefile"), "--configfile", str(ROOT / TINY[1])],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / target).read_text().strip()
