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


def test_readme_config_reference_matches_the_schema():
    from sslseg.config import reference_markdown

    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- config-reference:start -->\n")[1].split("<!-- config-reference:end -->")[0]
    assert block == reference_markdown(), "regenerate with `python -m sslseg.config`"


def test_readme_setup_is_the_two_make_targets_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up")[1].split("```bash\n")[1].split("```")[0]
    assert [line.split("#")[0].strip() for line in setup.strip().splitlines()] == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
