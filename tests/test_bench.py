"""The benchmark (so it cannot rot) and the planner's arithmetic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from sslseg.config import load_config
from sslseg.plan import STARTUP_S, count_work, plan

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "workflow" / "configs" / "tiny.yaml"
MEASUREMENTS = [f"{k}_{t}" for t in ("simmim", "finetune") for k in "abcd"] + ["evaluate", "pack"]


@pytest.mark.slow
def test_quick_bench_measures_everything(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "sslseg.bench", "--quick", "--device", "cpu", "--json", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for name in MEASUREMENTS:
        assert result["measurements"][name]["images_per_s"] > 0, name
        assert result["measurements"][name]["peak_mb"] >= 0, name
    for task in ("simmim", "finetune"):
        assert set(result["ratios"][task]) == {"a/b", "a/c", "d/a"}
        assert all(v > 0 for v in result["ratios"][task].values())
        assert result["flops_per_image"][task] > 0
        assert result["settings"][task]["compile"] is False  # --quick never pays for compiling
        assert result["settings"][task]["backbone"] == "viny"  # the planner scales by it
    assert "target a/b simmim" in proc.stdout and "finetune: a/b" in proc.stdout
    # the planner reads what the bench wrote
    p = plan(load_config(ROOT / "config.yaml", TINY), result, tmp_path)
    assert p["total_hours"] > 0 and set(p["runtime"]) == {"pack", "pretrain", "intermediate", "finetune", "evaluate"}


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: SIGALRM interrupts a loop that never ends (main thread, Unix)."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: the loop never ends")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_bench_refuses_fewer_images_than_a_batch(capsys):
    """Once it looped for ever: no whole batch in the pack, so every epoch was empty."""
    from sslseg.bench.__main__ import cli

    with deadline(120), pytest.raises(SystemExit) as exit_:
        cli(["--quick", "--device", "cpu", "--images", "4"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--images 4" in err and "batch size 8" in err


@pytest.mark.parametrize("memory_gb", [1.0, 0.0])  # held in memory, streamed from HDF5
def test_the_timing_loop_refuses_a_pack_without_a_whole_batch(tmp_path, memory_gb):
    """The loop the bench times draws from (batch > packed rows, partial batches dropped) stops
    with an error at once, whatever calls it, instead of spinning over empty epochs."""
    import h5py
    import numpy as np
    import torch

    from sslseg.bench.tasks import _forever
    from sslseg.data.loader import Batches

    with h5py.File(tmp_path / "pack.h5", "w") as f:
        f["images"] = np.zeros((3, 8, 8, 3), np.uint8)
    batches = Batches(tmp_path / "pack.h5", None, 4, torch.device("cpu"), ("images",), memory_gb=memory_gb)
    assert batches.streamed == (memory_gb == 0)
    with deadline(60), pytest.raises(ValueError, match="3 rows hold no batch of 4"):
        next(_forever(batches))


def test_plan_counts_image_steps_of_the_tiny_grid(tmp_path):
    cfg = load_config(ROOT / "config.yaml", TINY)
    work = count_work(cfg, "cpu", tmp_path)
    # pretrain: sizes {0, 16}: one job, 16 images x 2 epochs (batch 8 divides 16)
    assert work["pretrain"] == {"jobs": 1, "images": 32, "largest": 32}
    # intermediate: with and without pretraining; demo Intel train = 6 classes x 4 = 24, 1 epoch
    assert work["intermediate"] == {"jobs": 2, "images": 48, "largest": 24}
    assert work["intermediate_eval"] == {"jobs": 2, "images": 2 * 12, "largest": 12}
    # finetune: 4 inits x sizes {4, 8} x 2 seeds, 2 epochs, batch 4
    assert work["finetune"] == {"jobs": 16, "images": 4 * 2 * (4 + 8) * 2, "largest": 16}
    assert work["evaluate"] == {"jobs": 16, "images": 16 * 8, "largest": 8}
    assert work["pack"] == {"jobs": 4, "images": 24 + 16 + 24 + 12, "largest": 24}


def test_plan_uses_the_packed_size_whole_batches_and_scales_by_model(tmp_path):
    import h5py
    import numpy as np

    cfg = load_config(ROOT / "config.yaml", TINY)
    data = tmp_path / "results" / "tiny" / "data"
    data.mkdir(parents=True)
    with h5py.File(data / "intermediate_train.h5", "w") as f:
        f["images"] = np.zeros((30, 4, 4, 3), np.uint8)
    work = count_work(cfg, "cpu", tmp_path)
    assert work["intermediate"]["largest"] == 30  # 30 packed, batch 8: every labelled image (drop_last false)
    dropping = count_work(load_config(ROOT / "config.yaml", TINY) | {"intermediate": {**cfg["intermediate"], "drop_last": True}},
                          "cpu", tmp_path)
    assert dropping["intermediate"]["largest"] == 24  # 3 whole batches
    here = {**cfg["model"], "backbone": cfg["grid"]["backbones"][0], "compile": False}
    bench = {"device": "cpu", "compile_s": {}, "measurements": {k: {"images_per_s": 10.0} for k in MEASUREMENTS},
             "settings": {t: here for t in ("simmim", "finetune")}}
    p = plan(cfg, bench, tmp_path)
    assert p["stages"]["pretrain"]["images_per_s"] == pytest.approx(10.0)  # same model: no scaling
    assert p["stages"]["pretrain"]["hours"] == pytest.approx((32 / 10 + STARTUP_S) / 3600)
    at64 = {**here, "image_size": 64}
    bigger = {**bench, "settings": {"simmim": at64, "finetune": at64}}
    faster = plan(cfg, bigger, tmp_path)["stages"]["pretrain"]["images_per_s"]
    assert 3.3 < faster / 10.0 < 3.5  # benchmarked at 64 px (17 tokens), planned at 32 px (5 tokens)


def test_plan_scales_each_job_by_its_own_backbone(tmp_path):
    """A grid of two backbones costs the same whichever is listed first, and more than the smaller alone."""
    cfg = load_config(ROOT / "config.yaml", TINY)
    here = {**cfg["model"], "backbone": "viny", "compile": False}
    bench = {"device": "cpu", "compile_s": {}, "measurements": {k: {"images_per_s": 10.0} for k in MEASUREMENTS},
             "settings": {t: here for t in ("simmim", "finetune")}}

    def hours(backbones):
        c = {**cfg, "grid": {**cfg["grid"], "backbones": backbones}}
        return plan(c, bench, tmp_path)["stages"]["finetune"]["hours"]

    assert hours(["viny", "vit_small"]) == pytest.approx(hours(["vit_small", "viny"]))
    assert hours(["viny", "vit_small"]) > 2 * hours(["viny"])  # vit_small's steps cost more than viny's


def test_plan_measures_a_grid_whose_first_backbone_cannot_pretrain(tmp_path):
    """A ResNet baseline listed first: the pretraining step is timed on the first run that pretrains."""
    from sslseg.config import merge, validate
    from sslseg.plan import measure

    cfg = validate(merge(load_config(ROOT / "config.yaml", TINY),
                         {"grid": {"backbones": ["resnet18", "viny"], "finetune_sizes": [4], "seeds": [0]}}))
    bench = measure(cfg, seconds=0.2)
    assert bench["settings"]["simmim"]["backbone"] == "viny" and bench["settings"]["finetune"]["backbone"] == "resnet18"
    p = plan(cfg, bench, tmp_path)
    # viny: scratch and pretrained, each with and without intermediate; resnet18: scratch only (no SimMIM)
    assert p["stages"]["pretrain"]["hours"] > 0 and p["stages"]["finetune"]["jobs"] == 4 + 2


# --- the user's loop b: fair on CUDA, as recorded on CPU (issue 13, item 7) --------------------

def test_baseline_is_a_careful_users_loop_on_cuda_and_the_recorded_one_on_cpu(monkeypatch):
    """Nothing here touches CUDA: the settings are a function of the device type."""
    import torch

    from sslseg.bench import data
    from sslseg.bench.data import Baseline, baseline_settings

    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    cuda = torch.device("cuda")
    assert baseline_settings(cuda, compiled=True) == Baseline(amp="bf16", fused=True, compile=True, workers=6,
                                                              pre_resize=True)
    assert baseline_settings(cuda, compiled=False).compile is False  # a's compile choice, whatever it is
    cpu = Baseline(amp="none", fused=False, compile=False, workers=2, pre_resize=False)  # BENCHMARKS.md's b
    assert baseline_settings(torch.device("cpu"), compiled=True) == cpu


def test_pre_resized_images_keep_their_shape_and_trimaps(tmp_path):
    import numpy as np
    from PIL import Image

    from sslseg.bench.data import pre_resize, write_images

    records = write_images(tmp_path / "full", 4, (160, 120))
    small = pre_resize(records, tmp_path / "small", 36)
    for r, s in zip(records, small):
        full, image = Image.open(r.image), Image.open(s.image)
        assert min(image.size) == 36 and s.image.parent.name == r.image.parent.name  # ImageFolder classes kept
        assert abs(image.width / image.height - full.width / full.height) < 0.05  # aspect kept: the crop draws on it
        trimap = np.asarray(Image.open(s.trimap))
        assert trimap.shape == (image.height, image.width) and set(np.unique(trimap)) <= {1, 2, 3}


def test_the_cuda_baseline_loop_runs_here(tmp_path, monkeypatch):
    """b as CUDA runs it (bf16, pre-resized JPEGs, its own worker count), on the CPU: every path
    but fused AdamW and compile, which need the GPU or minutes."""
    import torch
    from PIL import Image

    from sslseg.bench import tasks
    from sslseg.bench.data import Baseline, write_images
    from sslseg.train import train_step

    monkeypatch.setattr(tasks, "baseline_settings",
                        lambda device, compiled: Baseline("bf16", False, False, workers=0, pre_resize=True))
    cfg = load_config(ROOT / "config.yaml", TINY)
    records = write_images(tmp_path, 8, (160, 120))
    data = {"records": records, "root": tmp_path, "sizes": {"simmim": 36, "finetune": 32}}
    device = torch.device("cpu")
    for task in ("simmim", "finetune"):
        s = tasks.task_settings(cfg, task, device, quick=True)
        loader, step, opt, how = tasks.user_loop(task, s, device, data, compiled=False)
        batch = next(loader)
        assert batch["images"].shape == (s["batch_size"], 3, 32, 32)
        assert ("masks" in batch) == (task == "finetune")
        assert torch.isfinite(train_step(step, opt, batch, None, how.amp, device))
        assert all(min(Image.open(p).size) == data["sizes"][task]
                   for p in (tmp_path / f"resized-{task}" / "jpeg").rglob("*.JPEG"))


# --- whole-grid efficiency of a finished run (issue 13, item 2) --------------------------------

def _synthetic_run(root: Path) -> Path:
    """A finished run's folder: three training jobs' log.csv, their Snakemake logs and benchmarks,
    and one other job (a pack) with a log and a benchmark, at known times."""
    run = root / "results" / "demo"
    jobs = {  # folder: (rows of (images_per_s, seconds), log relative to logs/, benchmark s, log mtime)
        "pretrain/viny/simmim-random-600": ([(100, 2.0), (100, 2.0)], "pretrain/viny/simmim-random-600", 10.0, 1_000),
        "intermediate/viny/scratch": ([(80, 1.5)], "intermediate/viny/scratch", 5.0, 1_010),
        "runs/viny/scratch-i0/finetune-full-n50-s0": ([(50, 1.0)], "finetune/viny/scratch-i0/finetune-full-n50-s0",
                                                      4.0, 1_030),
    }
    for folder, (rows, log, s, mtime) in jobs.items():
        d = run / folder
        d.mkdir(parents=True)
        (d / "log.csv").write_text("epoch,loss,lr,images_per_s,seconds\n"
                                   + "".join(f"{i + 1},0.5,0.001,{r},{t}\n" for i, (r, t) in enumerate(rows)))
        (d / "model.pt.json").write_text(json.dumps({"settings": {"model": {"image_size": 64}}}))
        tsv = f"s\th:m:s\n{s}\t0:00:{s:02.0f}\n"
        for sub, suffix, text in (("logs", ".log", "done\n"), ("benchmarks", ".tsv", tsv)):
            f = run / sub / (log + suffix)
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text)
            os.utime(f, (mtime, mtime))
    pack = run / "logs" / "pack_pets.log"  # starts first: 1000 - 10 - 20 = 970
    pack.write_text("packed\n")
    os.utime(pack, (990, 990))
    (run / "benchmarks" / "pack_pets.tsv").write_text("s\th:m:s\n20.0\t0:00:20\n")
    return run


def test_efficiency_of_a_finished_run(tmp_path, capsys):
    from sslseg.bench.__main__ import cli
    from sslseg.bench.efficiency import efficiency

    run = _synthetic_run(tmp_path)
    e = efficiency(run)
    assert e["image_steps"] == 400 + 120 + 50
    assert e["wall_s"] == pytest.approx(1_030 - 970)  # first start (pack: 990 - 20) to last end
    assert e["images_per_s"] == pytest.approx(80) and "median" in e["rate_from"]  # of 100, 80, 50
    assert e["efficiency"] == pytest.approx(570 / (60 * 80))
    assert e["in_step_s"] == pytest.approx(6.5) and e["stages"]["finetune"]["image_steps"] == 50
    given = efficiency(run, wall=100, rate=10)
    assert given["efficiency"] == pytest.approx(0.57) and given["wall_from"] == "given (--wall)"
    # BENCHMARKS.json's step stands in where it was measured at the run's image size, not elsewhere
    bench = {"settings": {"simmim": {"image_size": 64}}, "measurements": {"a_simmim": {"images_per_s": 114.0}}}
    assert efficiency(run, wall=100, bench=bench)["images_per_s"] == 114.0
    bench["settings"]["simmim"]["image_size"] = 128
    assert efficiency(run, wall=100, bench=bench)["images_per_s"] == pytest.approx(80)
    out = tmp_path / "eff.json"
    cli(["--efficiency", str(run), "--wall", "100", "--rate", "10", "--json", str(out)])
    assert "efficiency         0.570" in capsys.readouterr().out
    assert json.loads(out.read_text())["image_steps"] == 570


def test_efficiency_refuses_a_folder_without_training(tmp_path, capsys):
    from sslseg.bench.__main__ import cli

    with pytest.raises(SystemExit) as exit_:
        cli(["--efficiency", str(tmp_path)])
    assert exit_.value.code == 2 and "no training log.csv" in capsys.readouterr().err


def test_a_compiled_task_runs_its_compiled_step(tmp_path, monkeypatch):
    """The compiled paths of the benchmark (a, and b with a's compile setting), which a CPU run
    never takes on `auto`: forced on with `train.compile: true`, dynamo's eager backend standing
    in for inductor (minutes on 2 cores). Once they named a function they never imported."""
    import torch

    from sslseg.bench import tasks
    from sslseg.bench.data import write_images
    from sslseg.data.pack import pack

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **k: real(model, **{**k, "backend": "eager"}))
    cfg = load_config(ROOT / "config.yaml", TINY)
    cfg["train"]["compile"] = True
    device = torch.device("cpu")
    s = tasks.task_settings(cfg, "finetune", device)
    records = write_images(tmp_path, s["batch_size"], (160, 120))
    size = s["model"]["image_size"]
    pack(records, tmp_path / "pets.h5", size, cfg["data"]["pets"]["resize"], 1)
    data = {"finetune": tmp_path / "pets.h5", "records": records, "root": tmp_path, "sizes": {"finetune": size}}
    torch._dynamo.reset()
    r = tasks.bench_task("finetune", cfg, device, data, seconds=0.05, rounds=1, warmup=1, quick=False)
    torch._dynamo.reset()
    assert r["settings"]["compile"] is True
    assert {"a", "b", "c", "d", "e"} <= set(r["measurements"])  # e: the same step uncompiled


def test_the_compile_decision_sizes_the_default_grids_longest_jobs():
    """The full benchmark asks use_compile about the grid's longest job of each task; the default
    grid has pretraining size 0 (none) and fraction-free budgets."""
    from sslseg.bench.tasks import _longest_job
    from sslseg.config import stage_settings
    from sslseg import grid

    cfg = load_config(ROOT / "config.yaml")
    pre = stage_settings(cfg, "pretrain", grid.first_run(cfg, "pretrain"))
    tune = stage_settings(cfg, "finetune", grid.first_run(cfg, "finetune"))
    assert _longest_job(cfg, "simmim", pre) == 200_000 // 64 * 64 * 100  # 200k images x 100 epochs, whole batches
    assert _longest_job(cfg, "finetune", tune) == 6_000 // 64 * 64 * 100  # 6,000 pets, the largest budget


def test_the_step_profile_times_each_batch_size_and_splits_the_step(capsys):
    """python -m sslseg.bench.profile: a row per batch size asked, its time, and shares of the step
    that count nothing twice (each share, "other" included, is a part of the wall time left over)."""
    from sslseg.bench import profile

    rows = profile.main(["--configfile", str(TINY), "--task", "finetune", "--batch-sizes", "2", "4", "--steps", "2",
                         "--device", "cpu"])
    assert [r["batch_size"] for r in rows] == [2, 4]
    for r in rows:
        assert r["ms_per_step"] > 0 and r["images_per_s"] == pytest.approx(1000 * r["batch_size"] / r["ms_per_step"])
        assert r["gflop_per_s"] > 0
        assert sum(r["shares"].values()) == pytest.approx(1.0)
        assert all(v >= 0 for v in r["shares"].values()), r["shares"]  # "other" is what is left: never negative
        assert r["shares"]["matrix products"] > 0 and r["shares"]["optimizer"] > 0  # both are in every step
    out = capsys.readouterr().out
    assert "batch    2:" in out and "matrix products" in out and "GFLOP an image" in out
    for flags, named in ((["--steps", "0"], "--steps"), (["--device", "tpu9"], "--device tpu9")):
        with pytest.raises(SystemExit) as exit_:
            profile.cli(["--configfile", str(TINY), *flags])
        assert exit_.value.code == 2 and named in capsys.readouterr().err
