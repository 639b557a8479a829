"""The summary of failed jobs printed at the end of a failed run (the workflow's `onerror:`).

Every rule runs `python -m sslseg <rule> ... > {log} 2>&1`, so a stage's one-line error
(`sslseg <rule>: error: <message>`, sslseg/cli.py) lands in its log file, and on screen
Snakemake shows only "Error in rule X: ... log: <path> (check log file(s) for error details)".
Its `show-failed-logs` prints whole logs, but only where a profile sets it, and in the middle
of the run's output. This module reads Snakemake's main log (the file it hands `onerror:`),
finds the jobs that failed there, and picks from each job's log the one line that says why.

The main log is parsed, not Snakemake's internals (the scheduler's failed-job set is no API);
the format read is that of Snakemake 9's job error block (snakemake/logging.py,
`_format_job_error`): a header `Error in rule <name>:`, then indented `key: value` lines, one of
them `log: <path>, <path> (check log file(s) for error details)` when the job has logs (the
SLURM executor appends its own job log to the rule's). Standard library only: Snakemake's own
process imports this (a test checks).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

HEADER = re.compile(r"^(?P<indent>\s*)Error in rule (?P<rule>\S+?):\s*$")
FIELD = re.compile(r"^\s+(?P<key>[\w-]+): ?(?P<value>.*)$")
LOG_SUFFIX = "(check log file(s) for error details)"
# What sslseg.cli prints on a UserError (`sslseg pack_pets: error: ...`) or an unknown command.
SSLSEG_ERROR = re.compile(r"^sslseg(?: \S+)?: error: ")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def failed_jobs(text: str) -> list[dict]:
    """The failed jobs named in a Snakemake main log: [{rule, jobid, logs, message}], in the
    order they first failed, each job once (with `retries:` a job fails once per attempt; its
    last attempt's logs are kept, e.g. the latest SLURM log)."""
    jobs: dict[tuple[str, str], dict] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = HEADER.match(lines[i])
        i += 1
        if not m:
            continue
        job = {"rule": m["rule"], "jobid": "", "logs": [], "message": ""}
        seen_jobid = False
        while i < len(lines) and not HEADER.match(lines[i]):
            line = lines[i]
            # The block ends at the first line not indented under its header; a multi-line
            # message (before `jobid:`) may hold such lines, so they end it only after jobid.
            if seen_jobid and (not line.strip() or _indent(line) <= len(m["indent"])):
                break
            i += 1
            f = FIELD.match(line)
            if not f:
                continue
            key, value = f["key"], f["value"].strip()
            if key == "jobid":
                seen_jobid = True
                job["jobid"] = value
            elif key == "message" and not seen_jobid and value != "None":
                job["message"] = value
            elif key == "log" and seen_jobid and value.endswith(LOG_SUFFIX):
                job["logs"] = [p for p in value[: -len(LOG_SUFFIX)].strip().split(", ") if p]
        key = (job["rule"], job["jobid"])
        if key in jobs:
            jobs[key].update(logs=job["logs"] or jobs[key]["logs"], message=job["message"])
        else:
            jobs[key] = job
    return list(jobs.values())


def _read_lines(path: str) -> list[str] | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip() for line in f]
    except OSError:
        return None


def reason(logs: list[str], message: str = "") -> list[str]:
    """Why a job failed, in a line or two: the last `sslseg ...: error:` line of its logs (the
    rule's own log first); failing that (a traceback, a kill), Snakemake's message for the job
    (e.g. the SLURM state) and the last non-empty line of its first log that has one."""
    contents = [(p, _read_lines(p)) for p in logs]
    for _, lines in contents:
        errors = [line for line in lines or [] if SSLSEG_ERROR.match(line)]
        if errors:
            return [errors[-1]]
    out = [message] if message else []
    for path, lines in contents:
        last = [line for line in lines or [] if line.strip()]
        if last:
            name = f"{path}: " if len(logs) > 1 else ""
            return out + [f"{name}{last[-1].strip()}"]
    if not logs:
        return out or ["(the job has no log file)"]
    missing = [p for p, lines in contents if lines is None]
    return out or [f"(log {'missing' if len(missing) == len(logs) else 'empty'})"]


def main_log_paths(log) -> list[str]:
    """`onerror:`'s `log`: a list of paths in Snakemake 9 (one per file handler), a path or
    None in older versions."""
    if not log:
        return []
    return [log] if isinstance(log, (str, os.PathLike)) else [str(p) for p in log]


def summary(main_logs: Iterable[str]) -> str:
    """The end-of-run summary: each failed job's rule, log and reason; "" when none is found."""
    # One text for all: a job named in two files (a logger plugin's and the default) is one job.
    text = "\n".join("\n".join(_read_lines(path) or []) for path in main_logs)
    jobs = failed_jobs(text)
    if not jobs:
        return ""
    n = len(jobs)
    out = [f"sslseg: {n} job{'s' * (n != 1)} failed (why, in one line; the whole story is in the log):"]
    for job in jobs:
        out.append(f"  rule {job['rule']}, log: {', '.join(job['logs']) or '(none)'}")
        out += [f"    {line}" for line in reason(job["logs"], job["message"])]
    return "\n".join(out)
