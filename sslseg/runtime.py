"""A job's runtime settings: those that cannot change a result (`runtime:` in the config).

The workflow hands them to every job through the SSLSEG_RUNTIME environment variable (its
shell prefix, workflow/rules/common.smk), outside the rules' params, so changing them reruns
nothing. Kept apart from sslseg.config so that no stage's code depends on the grid or schema
code (an edit there reruns no training).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sslseg.io import UserError

ENV = "SSLSEG_RUNTIME"
SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def job_runtime(runtime: dict | None = None) -> dict:
    """As given; else as the workflow hands them (SSLSEG_RUNTIME); else the schema's defaults
    (a stage called by hand)."""
    if runtime is not None:
        return runtime
    if ENV in os.environ:
        try:
            return json.loads(os.environ[ENV])
        except json.JSONDecodeError as e:
            raise UserError(f"{ENV}: not valid JSON ({e}); the workflow's shell prefix sets it") from None
    import yaml

    section = yaml.safe_load(SCHEMA.read_text())["properties"]["runtime"]["properties"]
    return {k: v["default"] for k, v in section.items()}
