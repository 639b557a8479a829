"""The GPU smoke script (issue 13, item 8): refuses without CUDA, and every code path runs tiny
on the CPU (`--device cpu --quick`), so the script cannot rot while no GPU is lent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sslseg.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "workflow" / "configs" / "tiny.yaml"


def test_refuses_without_cuda_in_one_line(capsys, monkeypatch):
    import torch

    from sslseg.bench.gpu_smoke import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in ([], ["--device", "cpu"]):  # a CPU run is only a check of the script
        with pytest.raises(SystemExit) as exit_:
            cli(argv)
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "needs a CUDA device" in err


def test_quick_cpu_smoke_runs_every_path_and_feeds_the_planner(tmp_path, capsys):
    from sslseg.bench.gpu_smoke import cli
    from sslseg.plan import plan

    out = tmp_path / "smoke.json"
    result = cli(["--device", "cpu", "--quick", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    smoke = result["smoke"]
    assert smoke["attention"]["ok"]  # CPU SDPA has a flash kernel too: the forced forward ran on it
    assert smoke["syncs"]["steps"] == 3 and smoke["syncs"]["per_step"] is None  # counted on CUDA only
    assert set(smoke["pretrain"]) == {"resident", "streamed", "multiplier_x2"}
    assert smoke["pretrain"]["multiplier_x2"]["batch_size"] == 2 * smoke["pretrain"]["resident"]["batch_size"]
    for key in ("a_simmim", "d_simmim", "s_simmim", "a_finetune", "evaluate", "pack"):
        assert result["measurements"][key]["images_per_s"] > 0, key
    assert result["flops_per_image"]["simmim"] > 0 and result["settings"]["finetune"]["objective"] == "segment"
    printed = capsys.readouterr().out
    assert "fused attention: ok" in printed and "multiplier_x2" in printed
    p = plan(load_config(ROOT / "config.yaml", TINY), result, tmp_path)  # what `plan --bench` does with it
    assert p["total_hours"] > 0 and p["device_hours"] > 0 and p["efficiency"] is not None


def test_a_failing_section_is_reported_and_the_others_still_run(tmp_path, capsys, monkeypatch):
    """A first GPU run has minutes: one check that trips must not cost the other figures."""
    from sslseg.bench import gpu_smoke

    def broken(*a, **k):
        raise RuntimeError("set_sync_debug_mode: simulated failure\nsecond line")

    monkeypatch.setattr(gpu_smoke, "count_syncs", broken)
    out = tmp_path / "smoke.json"
    with pytest.raises(SystemExit) as exit_:
        gpu_smoke.cli(["--device", "cpu", "--quick", "--json", str(out)])
    assert exit_.value.code == 1
    saved = json.loads(out.read_text())
    assert saved["errors"] == {"syncs": "RuntimeError: set_sync_debug_mode: simulated failure"}
    assert "syncs" not in saved["smoke"] and saved["smoke"]["attention"]["ok"]
    for key in ("a_simmim", "d_simmim", "a_finetune", "evaluate", "pack"):  # measured after it failed, too
        assert saved["measurements"][key]["images_per_s"] > 0, key
    printed = capsys.readouterr()
    assert "host syncs per step: FAILED (RuntimeError: set_sync_debug_mode: simulated failure)" in printed.out
    assert "1 section(s) FAILED: syncs" in printed.out and "Traceback" in printed.err


def test_the_prepared_gpu_check_runs_the_smoke_test_then_the_planner(tmp_path):
    """tools/gpu_check.sh is what a session lent a GPU runs first, with minutes to spare: it must
    work from a bare checkout with the machine's python, and bring back the JSON and the plan."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "SSLSEG_WHEELS": str(tmp_path / "no-wheels")}  # (.whl holds CPython 3.12 wheels for the GPU machine)
    done = subprocess.run([str(ROOT / "tools" / "gpu_check.sh"), "--device", "cpu", "--quick"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert {p.name for p in tmp_path.iterdir()} == {"versions.txt", "gpu_smoke.json", "gpu_smoke.log", "plan.txt"}
    assert json.loads((tmp_path / "gpu_smoke.json").read_text())["errors"] == {}
    assert "predicted whole-grid efficiency" in (tmp_path / "plan.txt").read_text()
    assert "smoke test exit status 0, planner 0" in done.stdout and "config.yaml loads" in done.stdout
