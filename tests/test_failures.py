"""A failed run ends with each failed job's rule, log and one-line reason, whatever the profile
(the `onerror:` summary in workflow/rules/common.smk, parsed by sslseg/failures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TINY, copy_workflow, snakemake
from sslseg import failures

# Snakemake 9's main log around failed jobs (snakemake/logging.py `_format_job_error`), as a
# local run with --retries 1 --show-failed-logs and the SLURM executor write it.
MAIN_LOG = """\
Select jobs to execute...
[Sun Nov 29 15:56:30 2026]
localrule pack_pets:
    output: results/t/data/pets.h5, results/t/data/pets.h5.json
    log: results/t/logs/pack_pets.log
    jobid: 4
Error in rule pack_pets:
    message: None
    jobid: 4
    input: sslseg/cli.py
    output: results/t/data/pets.h5, results/t/data/pets.h5.json
    log: {logs}/pack_pets.log (check log file(s) for error details)
    shell:
        python -m sslseg pack_pets --root nowhere > {logs}/pack_pets.log 2>&1
        (command exited with non-zero exit code)
Logfile {logs}/pack_pets.log:
================================================================================
sslseg pack_pets: error: nowhere/oxford-iiit-pet: no Oxford-IIIT Pet here
================================================================================
Trying to restart job 4.
Error in rule pack_pets:
    message: None
    jobid: 4
    log: {logs}/pack_pets.log (check log file(s) for error details)
Error in rule pretrain:
    message: SLURM-job '812' failed, SLURM status is: 'TIMEOUT'. Detailed failure reason unavailable
    jobid: 7
    output: results/t/pretrain/viny/simmim-random-16/model.pt
    log: {logs}/pretrain.log, {logs}/812.log (check log file(s) for error details)
    shell:
        python -m sslseg pretrain > {logs}/pretrain.log 2>&1
        (command exited with non-zero exit code)
Error in group train:
    jobs:
        rule finetune:
            jobid: 9
            log: {logs}/finetune.log (check log file(s) for error details)
    Error in rule finetune:
        message: None
        jobid: 9
        log: {logs}/finetune.log (check log file(s) for error details)
Error in rule all_done:
    message: None
    jobid: 0
Shutting down, this might take some time.
Exiting because a job execution failed. Look above for error messages
"""


def _main_log(tmp_path: Path) -> Path:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "pack_pets.log").write_text(
        "sslseg pack_pets: error: an earlier attempt\nsslseg pack_pets: error: nowhere/oxford-iiit-pet: no Oxford-IIIT"
        " Pet here\n")
    (logs / "pretrain.log").write_text("pretrain 1/400:  12%|█▏        | 96/800\rpretrain 1/400:  13%|█▎  | 104/800\n")
    (logs / "812.log").write_text("slurmstepd: error: *** JOB 812 CANCELLED DUE TO TIME LIMIT ***\n\n")
    (logs / "finetune.log").write_text(
        'Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: CUDA error: device-side assert\n\n')
    main = tmp_path / "main.snakemake.log"
    main.write_text(MAIN_LOG.format(logs=logs))
    return main


def test_failed_jobs_are_read_off_the_main_log(tmp_path):
    main = _main_log(tmp_path)
    logs = tmp_path / "logs"
    jobs = failures.failed_jobs(main.read_text())
    # each job once (retried pack_pets), in failure order; grouped jobs too; a job without a log
    assert [(j["rule"], j["jobid"]) for j in jobs] == [("pack_pets", "4"), ("pretrain", "7"), ("finetune", "9"),
                                                       ("all_done", "0")]
    assert jobs[0]["logs"] == [f"{logs}/pack_pets.log"] and jobs[0]["message"] == ""
    assert jobs[1]["logs"] == [f"{logs}/pretrain.log", f"{logs}/812.log"]
    assert "TIMEOUT" in jobs[1]["message"]
    assert jobs[2]["logs"] == [f"{logs}/finetune.log"] and jobs[3]["logs"] == []


def test_each_failure_is_one_line_from_its_log(tmp_path):
    main = _main_log(tmp_path)
    logs = tmp_path / "logs"
    text = failures.summary(failures.main_log_paths([str(main)]))
    lines = text.splitlines()
    assert lines[0].startswith("sslseg: 4 jobs failed")
    block = "\n".join(lines[1:])
    expected = [
        f"  rule pack_pets, log: {logs}/pack_pets.log",  # the last sslseg error line, not the first
        "    sslseg pack_pets: error: nowhere/oxford-iiit-pet: no Oxford-IIIT Pet here",
        f"  rule pretrain, log: {logs}/pretrain.log, {logs}/812.log",  # no sslseg line: message + last line
        "    SLURM-job '812' failed, SLURM status is: 'TIMEOUT'. Detailed failure reason unavailable",
        f"    {logs}/pretrain.log: pretrain 1/400:  13%|█▎  | 104/800",
        f"  rule finetune, log: {logs}/finetune.log",  # a traceback: its last line
        "    RuntimeError: CUDA error: device-side assert",
        "  rule all_done, log: (none)",
        "    (the job has no log file)",
    ]
    assert block == "\n".join(expected), block
    # a log that is gone or empty says so; no failed job, no summary; Snakemake 8 passed one path
    assert failures.reason([str(tmp_path / "gone.log")]) == ["(log missing)"]
    (tmp_path / "empty.log").write_text("\n")
    assert failures.reason([str(tmp_path / "empty.log")]) == ["(log empty)"]
    (tmp_path / "ok.log").write_text("Building DAG of jobs...\nNothing to be done.\n")
    assert failures.summary([str(tmp_path / "ok.log"), str(tmp_path / "gone.log")]) == ""
    assert failures.main_log_paths(str(main)) == [str(main)] and failures.main_log_paths(None) == []


@pytest.mark.slow
def test_a_plain_run_ends_with_the_one_line_error_of_the_failed_stage(tmp_path):
    """No profile (so no show-failed-logs): the one line is in the job's log file only, and the
    run's output ends with it. Without the onerror summary the output only names the log."""
    wf = copy_workflow(tmp_path / "wf")
    (wf / "bad.yaml").write_text(f"data:\n  pets: {{source: oxford, root: {tmp_path / 'nowhere'}}}\n")
    # One --configfile flag with both files: a second flag would replace the first (tiny.yaml).
    # The pack only (it fails in a second): no job that trains first.
    proc = snakemake(wf, "results/tiny/data/pets.h5", "--cores", "1", *TINY, "bad.yaml", check=False, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "Error in rule pack_pets:" in out, out[-3000:]
    summary = out[out.index("sslseg: 1 job failed"):]
    assert "rule pack_pets, log: results/tiny/logs/pack_pets.log" in summary, summary
    error = next(line for line in summary.splitlines() if "sslseg pack_pets: error:" in line)
    assert f"{tmp_path / 'nowhere'}/oxford-iiit-pet" in error and "data.pets.root" in error, error
    assert out.count("sslseg pack_pets: error:") == 1  # only the summary shows it: no profile here
