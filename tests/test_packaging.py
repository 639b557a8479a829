"""The conda env of the rules and the Python package pin the same dependencies."""

from __future__ import annotations

import re
import tomllib

import yaml

from conftest import ROOT


def test_envs_match_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "envs" / "sslseg.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    norm = lambda reqs: {re.split(r"[=<>]", r)[0].lower(): r.lower() for r in reqs}  # noqa: E731
    assert norm(pip) == norm(project)
    assert all("==" in r for r in project), "pin every dependency for fast, reproducible installs"
