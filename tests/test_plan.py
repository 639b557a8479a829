"""The planner on a GPU benchmark: per-job overhead, GPUs shared by several jobs, GPU-hours,
and each job costed by its own model's FLOPs (decoders, MAE's visible-token encoder)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from sslseg.config import load_config, merge, validate
from sslseg.plan import STARTUP_S, job_overhead, plan, print_plan

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "workflow" / "configs" / "tiny.yaml"
KEYS = ["a_simmim", "a_finetune", "evaluate", "pack"]


def tiny(**changes) -> dict:
    """The tiny config without the intermediate step (fewer stages to add up by hand), merged with `changes`."""
    return validate(merge(load_config(ROOT / "config.yaml", TINY), merge({"grid": {"intermediate": [False]}}, changes)))


def fake_bench(cfg: dict, device: str = "cuda", rate: float = 10.0, **extra) -> dict:
    """A benchmark file at `rate` img/s for every measurement, of the config's own model (so no scaling)."""
    here = {**cfg["model"], "backbone": cfg["grid"]["backbones"][0], "compile": False}
    return {"device": device, "device_name": "fake", "compile_s": {}, "source": "test",
            "measurements": {k: {"images_per_s": rate} for k in KEYS}, "settings": {"simmim": here, "finetune": here},
            **extra}


def test_gpu_hours_are_the_hand_computation(tmp_path):
    """tiny without intermediate: 1 pretraining of 32 image-steps; 8 fine-tunes (2 inits x sizes
    4, 8 x 2 seeds; 2 epochs, every image) of 8 or 16 image-steps; all at 10 img/s with 2 + 1 s of
    start-up. Evaluation and packing ask for no GPU in tiny, so they are not GPU time."""
    cfg = copy.deepcopy(tiny())
    cfg["resources"]["finetune"]["gpu_share"] = 2  # the per-rule key: two fine-tunes to a GPU
    bench = fake_bench(cfg, job_overhead_cpu_s=2.0, cuda_init_s=1.0)
    p = plan(cfg, bench, tmp_path)
    assert p["job_overhead_s"] == 3.0
    pretrain_s = 32 / 10 + 3  # one job alone on its GPU: 6.2 s
    fine_steps = 4 * 8 / 10 + 4 * 16 / 10  # 9.6 s of steps
    fine_jobs = fine_steps + 8 * 3  # 33.6 s of jobs; two at a time: start-ups overlap, steps do not
    assert p["stages"]["pretrain"]["device_hours"] == pytest.approx(pretrain_s / 3600)
    assert p["stages"]["finetune"]["device_hours"] == pytest.approx(max(fine_steps, fine_jobs / 2) / 3600)
    assert p["stages"]["evaluate"]["device_hours"] == 0 and p["stages"]["pack"]["device_hours"] == 0
    assert p["device_hours"] == pytest.approx((6.2 + 16.8) / 3600)
    assert p["efficiency"] == pytest.approx((3.2 + 9.6) / (6.2 + 16.8))
    # eight to a GPU: the start-ups hide behind the steps, which cannot overlap
    cfg["resources"]["finetune"]["gpu_share"] = 8
    assert plan(cfg, bench, tmp_path)["stages"]["finetune"]["device_hours"] == pytest.approx(fine_steps / 3600)
    # without the key (before the workflow has it): one job per GPU
    del cfg["resources"]["finetune"]["gpu_share"]
    assert plan(cfg, bench, tmp_path)["stages"]["finetune"]["device_hours"] == pytest.approx(fine_jobs / 3600)


def test_job_overhead_comes_from_the_benchmark_else_the_default():
    assert job_overhead({"device": "cpu"}) == STARTUP_S
    assert job_overhead({"device": "cpu", "job_overhead_cpu_s": 1.2, "cuda_init_s": 4}) == 1.2  # no CUDA on a CPU
    assert job_overhead({"device": "cuda", "job_overhead_cpu_s": 1.2, "cuda_init_s": 4}) == pytest.approx(5.2)
    assert job_overhead({"device": "cuda", "job_overhead_s": 7, "job_overhead_cpu_s": 1.2}) == 7


def test_decoder_runs_cost_more_than_headless_ones(tmp_path):
    """The benchmark timed the pixel head; a grid fine-tuning through a UNet decoder is costed by
    its own FLOPs per image, so it takes longer."""
    from sslseg.plan import reference_flops

    pixel = tiny()
    bench = fake_bench(pixel)
    bench["flops_per_image"] = {t: reference_flops(pixel, bench, t) for t in ("simmim", "finetune")}
    unet = tiny(finetune={"head": "unet"})
    headless, decoded = plan(pixel, bench, tmp_path)["stages"], plan(unet, bench, tmp_path)["stages"]
    assert headless["finetune"]["images_per_s"] == pytest.approx(10.0)  # the benchmarked model itself
    assert decoded["finetune"]["images"] == headless["finetune"]["images"]
    assert decoded["finetune"]["images_per_s"] < 10.0 / 2  # the decoder costs more than the ViT itself
    assert decoded["finetune"]["hours"] > headless["finetune"]["hours"]
    assert decoded["evaluate"]["hours"] > headless["evaluate"]["hours"]


def test_mae_pretraining_costs_less_per_image_than_simmim(tmp_path):
    """At mask ratio 0.75 MAE's encoder sees a quarter of the tokens; with a decoder of ViNy's size
    ("small") that makes a cheaper step than SimMIM's, which encodes every token. The paper's
    512-wide, 8-deep decoder ("mae") dwarfs ViNy and costs several times SimMIM: the planner has
    to see both."""
    def pretrain_rate(objective: str, decoder: str = "small") -> float:
        cfg = tiny(grid={"objectives": [objective]}, model={"image_size": 64},
                   objectives={"mae": {"mask_ratio": 0.75, "decoder": decoder}})
        simmim_cfg = tiny(grid={"objectives": ["simmim"]}, model={"image_size": 64})
        bench = fake_bench(simmim_cfg)  # SimMIM's step, as the benchmark times it
        return plan(cfg, bench, tmp_path)["stages"]["pretrain"]["images_per_s"]

    assert pretrain_rate("simmim") == pytest.approx(10.0)
    assert pretrain_rate("mae") > 2 * 10.0
    assert pretrain_rate("mae", "mae") < 10.0 / 3


def test_plan_prints_gpu_hours_from_a_bench_file(tmp_path, capsys):
    cfg = tiny()
    bench = tmp_path / "gpu.json"
    bench.write_text(json.dumps(fake_bench(cfg, job_overhead_s=3.0)))
    result = print_plan(str(ROOT / "config.yaml"), str(TINY), str(bench))
    out = capsys.readouterr().out
    assert "3.0 s start-up per job" in out and "estimated GPU-hours" in out
    assert f"{result['device_hours']:.2f}" in out.split("estimated GPU-hours:")[1]
    assert "predicted whole-grid efficiency" in out
