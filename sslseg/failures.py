"""The summary printed at the end of a failed run (the workflow's `onerror:`).

Every rule runs `python -m sslseg <rule> ... > {log} 2>&1`, so a stage's one-line error
(`sslseg <rule>: error: <why>`, sslseg/cli.py) lands in its log file, and on screen Snakemake
only names that file. `show-failed-logs` would print whole logs, and only where a profile sets
it. So the workflow ends a failed run with the error line of every log this run wrote: all
rule logs live under one folder, and a log written since the run started that holds such a
line is a job that failed on bad input. (A traceback or a cluster kill has no such line;
Snakemake's own error block, just above, names that job and its log.) Standard library only:
Snakemake's process imports this.
"""

from __future__ import annotations

import re
from pathlib import Path

SSLSEG_ERROR = re.compile(r"^sslseg \S+: error: ")


def errors_since(logs: str | Path, started: float) -> list[str]:
    """`<log>: <error line>` for every log below `logs` modified after `started` (a time.time())
    whose last sslseg error line says why its job failed, oldest first."""
    found = []
    for path in Path(logs).rglob("*.log"):
        try:
            mtime = path.stat().st_mtime
            if mtime < started:
                continue
            lines = [ln.rstrip() for ln in path.read_text(errors="replace").splitlines() if SSLSEG_ERROR.match(ln)]
        except OSError:  # removed meanwhile (e.g. a rerun of the same job): nothing to report
            continue
        if lines:
            found.append((mtime, f"{path}: {lines[-1]}"))
    return [line for _, line in sorted(found)]


def summary(logs: str | Path, started: float) -> str:
    """The end-of-run block: why each job failed, in one line each ("" when no log says)."""
    errors = errors_since(logs, started)
    if not errors:
        return ""
    return "\n".join(["sslseg: why the run stopped (each failed job's log, and its one-line error):",
                      *(f"  {e}" for e in errors)])
