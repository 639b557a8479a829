"""A failed run ends with each failed job's log and one-line error, whatever the profile
(the `onerror:` summary in workflow/rules/common.smk, sslseg/failures.py)."""

from __future__ import annotations

import os
import time

import pytest

from conftest import TINY, copy_workflow, snakemake
from sslseg import failures


def test_the_summary_holds_the_error_line_of_each_log_written_by_this_run(tmp_path):
    logs = tmp_path / "logs"
    (logs / "finetune").mkdir(parents=True)
    old = logs / "pack_pets.log"  # failed in an earlier run, not rerun: not this run's failure
    old.write_text("sslseg pack_pets: error: old news\n")
    os.utime(old, (time.time() - 3600,) * 2)
    started = time.time() - 60
    (logs / "finetune" / "a.log").write_text("epoch 1\nsslseg finetune: error: first\nsslseg finetune: error: why\n")
    (logs / "evaluate.log").write_text("Traceback (most recent call last):\nRuntimeError: boom\n")  # no sslseg line
    (logs / "ok.log").write_text("loaded backbone\n")
    assert failures.errors_since(logs, started) == [f"{logs / 'finetune' / 'a.log'}: sslseg finetune: error: why"]
    text = failures.summary(logs, started)
    assert text.splitlines()[1].strip().endswith("sslseg finetune: error: why") and "old news" not in text
    assert failures.summary(logs, time.time() + 60) == "" and failures.summary(tmp_path / "none", 0) == ""


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
    summary = out[out.index("sslseg: why the run stopped"):]
    error = next(line for line in summary.splitlines() if "sslseg pack_pets: error:" in line)
    assert error.strip().startswith("results/tiny/logs/pack_pets.log: sslseg pack_pets: error:"), error
    assert f"{tmp_path / 'nowhere'}/oxford-iiit-pet" in error and "data.pets.root" in error, error
    assert out.count("sslseg pack_pets: error:") == 1  # only the summary shows it: no profile here
