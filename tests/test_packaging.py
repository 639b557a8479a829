"""Dependencies: ranges in pyproject.toml, the exact tested set in requirements.lock,
and the conda env of the rules (envs/sslseg.yaml) equal to the lock."""

from __future__ import annotations

import re
import tomllib

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from conftest import ROOT

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def lock_lines() -> list[str]:
    text = (ROOT / "requirements.lock").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def lock_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lock_lines():
        m = PIN.match(line)
        assert m, f"requirements.lock: {line!r} is not name==version"
        name = canonicalize_name(m[1])
        assert name not in pins, f"requirements.lock pins {name} twice"
        pins[name] = m[2]
    return pins


def env_file() -> tuple[list[str], list[str]]:
    """(conda dependencies, pip list) of envs/sslseg.yaml."""
    deps = yaml.safe_load((ROOT / "envs" / "sslseg.yaml").read_text())["dependencies"]
    pip = [d["pip"] for d in deps if isinstance(d, dict)]
    assert len(pip) == 1, "envs/sslseg.yaml: expected one pip: section"
    return [d for d in deps if not isinstance(d, dict)], pip[0]


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements() -> list[Requirement]:
    p = project()
    return [Requirement(r) for r in p["dependencies"] + p["optional-dependencies"]["test"]]


def test_lock_is_complete_pins_without_sslseg():
    pins = lock_pins()
    assert "sslseg" not in pins, "the lock holds the dependencies; sslseg is installed from the tree"
    assert {"torch", "setuptools", "snakemake", "pytest", "snakefmt"} <= set(pins), "regenerate with `make lock`"


def test_env_pip_section_equals_the_lock():
    conda, pip = env_file()
    assert [str(p) for p in pip] == lock_lines(), "regenerate both with `make lock`"
    pythons = [d for d in conda if str(d).startswith("python=")]
    assert len(pythons) == 1 and "pip" in conda
    version = pythons[0].split("=", 1)[1]
    resolved = re.search(r"^# Resolved for: CPython (\d+\.\d+) ", (ROOT / "requirements.lock").read_text(), re.M)
    assert resolved and resolved[1] == version, "envs/sslseg.yaml's python is not the one the lock was resolved for"
    assert SpecifierSet(project()["requires-python"]).contains(version)


def test_lock_satisfies_every_pyproject_range():
    pins = lock_pins()
    for req in requirements():
        name = canonicalize_name(req.name)
        if req.marker is not None and not req.marker.evaluate({"python_version": "3.11", "extra": "test"}):
            continue
        assert name in pins, f"{req}: not in requirements.lock; run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject.toml's {req}; run `make lock`"


def test_pyproject_gives_ranges_not_pins():
    for req in requirements():
        ops = {s.operator for s in req.specifier}
        assert ops, f"{req}: give a lower bound"
        assert not ops & {"==", "==="}, f"{req}: pyproject.toml takes ranges; exact pins live in requirements.lock"
        assert ops & {">=", "~=", ">"}, f"{req}: give a lower bound"


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


def test_readme_says_what_to_do_after_a_hard_kill():
    """Every kill -9 leaves incomplete outputs that Snakemake refuses to trust until rerun with
    --rerun-incomplete, and a killed Snakemake leaves its lock: the robustness section says both."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Robustness"):].split("\n## ")[0]
    assert "After a hard kill" in section and "--rerun-incomplete" in section and "--unlock" in section
    profile = (ROOT / "workflow" / "profiles" / "default" / "config.yaml").read_text()
    assert "rerun-incomplete: true" in profile  # what `make demo` runs with
