"""`python -m sslseg plan`: how long the configured grid takes, before anyone submits it.

Counts the images each job pushes through its step (as `fit` runs them: whole batches
only, every epoch) or reads (evaluation, packing), and divides by the images/s that
`python -m sslseg.bench` measured (BENCHMARKS.json), scaled from the benchmarked model to
the configured one. Without a benchmark file it times the SimMIM and segmentation steps
here for a few seconds instead. Prints per-stage hours and a `resources: runtime` per rule,
and, from a GPU benchmark (`--bench`, e.g. `python -m sslseg.bench.gpu_smoke --json`'s), the
grid's GPU-hours and its predicted whole-grid efficiency.

Model of a job: start-up (the benchmark's measured per-job overhead, `job_overhead_s` or
`job_overhead_cpu_s`, plus `cuda_init_s` on CUDA; STARTUP_S where the file has none) +
compile time if `train.use_compile` would compile it + images / rate. The rate is the
benchmark's img/s scaled by FLOPs per image (`sslseg.bench.timing.settings_flops`: the
job's own objective, decoder and frozen parts) over the benchmarked model's. On a GPU,
`resources.<rule>.gpu_share` jobs of a rule share one GPU: their start-ups and compiles
overlap each other's steps, their steps do not (a step is taken to keep the GPU busy), so the
rule's GPU time is max(Σ step time, Σ job time / gpu_share).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

from sslseg import grid
from sslseg.config import load_config, rule_resources, stage_settings
from sslseg.io import UserError
from sslseg.sizes import resolve_size

ROOT = Path(__file__).resolve().parents[1]
# Published sizes, used until the workflow has packed the real sets (their packs are then read);
# pets: the images its trainval and test lists name, which is what pack_pets packs.
OFFICIAL = {"pets": 7_349, "intermediate_train": 14_034, "intermediate_test": 3_000}
STARTUP_S = 10  # per job, for a benchmark file without job_overhead_s: cold start, pack, checkpoints (BENCHMARKS.md)
HEADROOM = 1.5
# Stage → (resources key, throughput measurement in the benchmark JSON). The intermediate
# classifier is timed by the SimMIM step: the same backbone forward/backward, a light head.
STAGES = {"pack": ("pack", "pack"), "pretrain": ("pretrain", "a_simmim"), "intermediate": ("intermediate", "a_simmim"),
          "intermediate_eval": ("evaluate", "evaluate"), "finetune": ("finetune", "a_finetune"),
          "evaluate": ("evaluate", "evaluate")}


def _image_steps(n: int, s: dict) -> int:
    """Images one training job pushes through its step: every epoch, all `n` images (the last
    batch short) or whole batches only (`drop_last`); or `iterations` batches with an iteration
    budget (counted as full batches)."""
    if s["iterations"]:
        return s["iterations"] * s["batch_size"]
    return (n // s["batch_size"] * s["batch_size"] if s["drop_last"] else n) * s["epochs"]


def _epochs(n: int, s: dict) -> int:
    """Epochs `fit` runs over `n` images: `epochs`, or the epochs an `iterations` budget spans."""
    per_epoch = n // s["batch_size"] if s["drop_last"] else -(-n // s["batch_size"])
    return -(-s["iterations"] // per_epoch) if s["iterations"] and per_epoch else s["epochs"]


def _count_images(folder: Path) -> int | None:
    from sslseg.data.sources import IMAGE_SUFFIXES

    if not folder.is_dir():
        return None
    return sum(1 for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)


def dataset_sizes(cfg: dict, root: Path) -> dict[str, int]:
    """Images in each packed set: the pack's length if the workflow wrote it, else what the
    source holds (demo generator's count, or the files in the folder), else the official size."""
    from sslseg.data.pack import pack_length

    demo, data = cfg["data"]["demo"], cfg["data"]
    sizes = dict(OFFICIAL)
    if data["pets"]["source"] == "demo":
        sizes["pets"] = demo["pets"]
    else:
        lists = [root / data["pets"]["root"] / "oxford-iiit-pet" / "annotations" / f"{s}.txt" for s in ("trainval", "test")]
        if all(f.exists() for f in lists):
            sizes["pets"] = sum(len(f.read_text().split("\n")) - 1 for f in lists)
    if data["intermediate"]["source"] == "demo":
        per_class = demo["intel_per_class"]
        sizes.update(intermediate_train=6 * per_class, intermediate_test=6 * max(2, per_class // 4))
    else:
        for split in ("train", "test"):
            n = _count_images(root / data["intermediate"]["root"] / f"seg_{split}")
            sizes[f"intermediate_{split}"] = n or sizes[f"intermediate_{split}"]
    for name in sizes:
        packed = root / "results" / cfg["name"] / "data" / f"{name}.h5"
        if packed.exists():
            sizes[name] = pack_length(packed)
    return sizes


Job = tuple[int, "dict | None"]  # (images, the settings whose model it runs; None: packing)


def jobs_of(cfg: dict, device_type: str = "cpu", root: Path = Path(".")) -> dict[str, list[Job]]:
    """Per stage, (images, settings) of each job (image-steps for training, images read
    otherwise; the stage settings of the model it trains or evaluates, for its cost; None for
    packing), for exactly the jobs the workflow runs: the runs and
    checkpoints of sslseg.grid. Fine-tune sizes given as fractions ("5%") are resolved against
    the fine-tune pool, as the subset rule will: the pets (packed, demo or listed count, else
    7,349) minus the test set (and the validation set under train_val_test; split_sizes). With a
    validation set, each fine-tune also scores it every epoch: a forward pass, counted as a third
    of an image-step (the ratio `measure` assumes for evaluation) and added to its job."""
    import torch

    from sslseg.data.splits import split_sizes
    from sslseg.optim import scale_for_device

    sizes, device = dataset_sizes(cfg, root), torch.device(device_type)
    pool, val, test = split_sizes(sizes["pets"], cfg["data"]["pets"])
    runs = grid.runs(cfg)
    pretrained, inter = grid.by_path(runs, grid.pretrain_dir), grid.by_path(runs, grid.intermediate_dir)

    def steps(stage: str, run, n: int) -> Job:
        s = scale_for_device(stage_settings(cfg, stage, run), device)
        return _image_steps(n, s), s

    def evaluated(stage: str, run) -> dict:  # the trained model, run whole (nothing frozen in a forward pass)
        return {**stage_settings(cfg, stage, run), "freeze": []}

    jobs: dict[str, list[Job]] = {k: [] for k in STAGES}
    packed = {}  # pretraining pack per data set: its largest size
    for run in pretrained.values():
        packed[run.data] = max(packed.get(run.data, 0), run.pretrain)
    jobs["pack"] = [(n, None) for n in (sizes["pets"], *packed.values())]
    jobs["pretrain"] = [steps("pretrain", run, run.pretrain) for run in pretrained.values()]
    if inter:
        jobs["pack"] += [(sizes["intermediate_train"], None), (sizes["intermediate_test"], None)]
        jobs["intermediate"] = [steps("intermediate", run, sizes["intermediate_train"]) for run in inter.values()]
        jobs["intermediate_eval"] = [(sizes["intermediate_test"], evaluated("intermediate", run)) for run in inter.values()]
    downstream = grid.by_path(runs, grid.run_dir).values()
    for run in downstream:  # fine-tunes and probes
        n = resolve_size(run.finetune, pool)
        s = scale_for_device(stage_settings(cfg, run.adaptation, run), device)
        jobs["finetune"].append((_image_steps(n, s) + val * _epochs(n, s) // 3, s))
    jobs["evaluate"] = [(test, evaluated(run.adaptation, run)) for run in downstream]
    return jobs


def count_work(cfg: dict, device_type: str = "cpu", root: Path = Path(".")) -> dict[str, dict]:
    """Per stage: jobs, total images and the largest single job."""
    return {k: {"jobs": len(v), "images": sum(n for n, _ in v), "largest": max((n for n, _ in v), default=0)}
            for k, v in jobs_of(cfg, device_type, root).items()}


def reference_flops(cfg: dict, bench: dict, task: str, train: bool = True) -> float:
    """FLOPs per image of the step the benchmark timed for `task`: its own count where it wrote
    one (also evaluation's reference: the benchmarked fine-tune trains every weight), else counted
    here for the model it names (`settings[task]`: backbone, image and patch size; files before
    the grid axes say preset) with the grid's first run's settings (`train`: see settings_flops)."""
    from sslseg.bench.timing import settings_flops

    if bench.get("flops_per_image", {}).get(task):
        return bench["flops_per_image"][task]
    b = bench["settings"][task]
    if task == "finetune":
        run = grid.first_run(cfg, "finetune")
        stage = run.adaptation
    elif (run := grid.first_run(cfg, "pretrain")) is not None:  # the objective the benchmark timed (named
        run, stage = dataclasses.replace(run, objective=b.get("objective", "simmim")), "pretrain"  # in newer files)
    else:  # nothing pretrains: the SimMIM step stands for the intermediate classifier alone
        run, stage = grid.first_run(cfg, "intermediate"), "intermediate"
    s = stage_settings(cfg, stage, run)
    model = {**s["model"], "backbone": b.get("backbone", b.get("preset")), "image_size": b["image_size"],
             "patch_size": b["patch_size"]}
    return settings_flops({**s, "model": model}, train)


def job_overhead(bench: dict) -> float:
    """Seconds from a job's start to its first step: the benchmark's measurement where it has one
    (`job_overhead_s`; else `job_overhead_cpu_s`, plus `cuda_init_s` on CUDA), else STARTUP_S."""
    if "job_overhead_s" in bench:
        return float(bench["job_overhead_s"])
    if "job_overhead_cpu_s" in bench:
        cuda = float(bench.get("cuda_init_s", 0)) if bench["device"] == "cuda" else 0.0
        return float(bench["job_overhead_cpu_s"]) + cuda
    return float(STARTUP_S)


def measure(cfg: dict, seconds: float = 4.0) -> dict:
    """A short stand-in for BENCHMARKS.json: the SimMIM and segmentation model steps (eager,
    random batches already on the device) at the configured size; evaluation taken as 3x the
    segmentation step (forward only is about a third of forward + backward)."""
    import torch

    from sslseg.bench.timing import random_batch, step_rate
    from sslseg.objectives import build_objective
    from sslseg.optim import scale_for_device
    from sslseg.train import pick_device

    device = pick_device(cfg["device"])
    rates, models = {}, {}
    for key, stage in (("a_simmim", "pretrain"), ("a_finetune", "finetune")):
        run = grid.first_run(cfg, stage)
        if run is None:  # nothing pretrains: no pretraining (or intermediate) rate to measure
            continue
        s = scale_for_device(stage_settings(cfg, run.adaptation if stage == "finetune" else stage, run), device)
        res = rule_resources(cfg, stage)
        torch.set_num_threads(min(res["threads"], os.cpu_count() or 1))  # as the job will run
        batch = random_batch(s, s["batch_size"], device)
        model = build_objective(s["objective"], s)
        rates[key] = {"images_per_s": step_rate(model, batch, s, device, seconds), "threads": torch.get_num_threads()}
        models[key[2:]] = {**s["model"], "compile": False}  # the model measured: the planner scales from it
    rates["evaluate"] = {**rates["a_finetune"], "images_per_s": 3 * rates["a_finetune"]["images_per_s"]}
    models.setdefault("simmim", models["finetune"])  # nothing pretrains: no simmim rate to scale
    return {"device": device.type, "device_name": str(device), "cpus": os.cpu_count(), "measurements": rates,
            "compile_s": {}, "settings": models,
            "source": f"a {seconds:g}-s measurement per step here (eager; run python -m sslseg.bench for better figures)"}


BENCH_KEYS = ("device", "settings", "measurements")  # what every benchmark file has, and the planner reads


def load_bench(path: str | None) -> dict | None:
    candidates = [Path(path)] if path else [Path("BENCHMARKS.json"), ROOT / "BENCHMARKS.json"]
    for p in candidates:
        if p.exists():
            what = "the JSON that python -m sslseg.bench --json (or sslseg.bench.gpu_smoke --json) writes"
            try:
                bench = json.loads(p.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise UserError(f"{p}: not a benchmark JSON ({e}); give {what}") from None
            missing = [k for k in BENCH_KEYS if k not in bench] if isinstance(bench, dict) else list(BENCH_KEYS)
            if missing:
                raise UserError(f"{p}: not a benchmark (no {', '.join(missing)}); give {what}")
            return {**bench, "source": str(p)}
    if path:
        raise UserError(f"{path}: benchmark file not found; write it with python -m sslseg.bench --json {path}")
    return None


def plan(cfg: dict, bench: dict, root: Path = Path(".")) -> dict:
    """Stage rows (jobs, images, images/s, hours, device-hours, longest job's minutes), the
    suggested runtimes, and on the whole grid: hours (jobs one after another), device-hours
    (GPU-hours on CUDA: the GPU rules only, `gpu_share` jobs to a GPU; see the module doc) and
    the predicted whole-grid efficiency, Σ training step time / device time.

    A job takes start-up + (compile time, if train.use_compile would compile it) + images / rate,
    where rate is the benchmark's, scaled to the job's model by FLOPs per image, and for training
    jobs that would not be compiled while the benchmark was, converted with the measured
    eager/compiled ratio."""
    import torch

    from sslseg.bench.timing import settings_flops
    from sslseg.train import use_compile

    device, m = torch.device(bench["device"]), bench["measurements"]
    overhead, train_cfg = job_overhead(bench), cfg["train"]
    min_steps = [train_cfg["compile_min_image_steps"]] if "compile_min_image_steps" in train_cfg else []
    rows, runtime, training_s = {}, {}, 0.0
    for stage, jobs in jobs_of(cfg, bench["device"], root).items():
        res_key, meas = STAGES[stage]
        if not jobs:
            continue
        training, evaluating = meas.startswith("a_"), stage in ("evaluate", "intermediate_eval")
        task = "simmim" if meas == "a_simmim" else "finetune"
        res = rule_resources(cfg, res_key)
        threads = 1.0
        if bench["device"] == "cpu":  # CPU throughput follows the threads the rule gives its job
            measured = m.get(meas, {}).get("threads") or bench["settings"][task].get("threads")
            threads = min(res["threads"], bench.get("cpus") or res["threads"]) / measured if measured else 1.0
        reference = reference_flops(cfg, bench, task, train=not evaluating) if stage != "pack" else 1.0
        seconds, step_s = [], 0.0
        for n, s in jobs:
            scale = threads * (1.0 if s is None else reference / settings_flops(s, train=not evaluating))
            r = m[meas]["images_per_s"] * scale if meas in m else None
            compiled = training and use_compile(train_cfg["compile"], device, n, *min_steps)
            extra = overhead
            if r is not None and training and bench["settings"][task].get("compile") and not compiled \
                    and f"e_{task}" in m:
                r = r * m[f"e_{task}"]["images_per_s"] / m[f"c_{task}"]["images_per_s"]
            if compiled:
                extra += bench["compile_s"].get(task, 0)
            seconds.append(None if r is None else n / r + extra)
            step_s += 0 if r is None else n / r
        known = None not in seconds
        on_device = device.type != "cuda" or res.get("gpu", 0) > 0  # packing runs on the CPU beside the GPUs
        share = res.get("gpu_share", 1) if device.type == "cuda" else 1
        images = sum(n for n, _ in jobs)  # the stage's rate: its images over its steps' time, all models
        rows[stage] = {"jobs": len(jobs), "images": images, "images_per_s": images / step_s if step_s > 0 else None,
                       "hours": sum(seconds) / 3600 if known else None,
                       "device_hours": (max(step_s, sum(seconds) / share) / 3600 if on_device else 0.0)
                       if known else None, "gpu_share": share,
                       "longest_min": max(seconds) / 60 if known else None}
        training_s += step_s if training and on_device else 0.0
        if known:
            runtime[res_key] = max(runtime.get(res_key, 0), max(1, math.ceil(HEADROOM * max(seconds) / 60)))
    total = sum(r["hours"] for r in rows.values() if r["hours"] is not None)
    device_h = sum(r["device_hours"] for r in rows.values() if r["device_hours"] is not None)
    return {"stages": rows, "total_hours": total, "device_hours": device_h, "job_overhead_s": overhead,
            "efficiency": training_s / (3600 * device_h) if device_h else None, "runtime": runtime}


def print_plan(config: str = "config.yaml", configfile: str | None = None, bench: str | None = None) -> dict:
    """Estimate the wall time of the configured grid on this device (BENCHMARKS.json, or a short
    measurement here), or on a GPU from its benchmark (--bench, e.g. the GPU smoke script's JSON):
    per stage, with a suggested resources.<rule>.runtime, the GPU-hours and the predicted
    whole-grid efficiency."""
    cfg = load_config(config, configfile)
    b = load_bench(bench) or measure(cfg)
    default = load_bench(None) if bench else None  # BENCHMARKS.json: the per-job overhead, if --bench lacks it
    if default and not {"job_overhead_s", "job_overhead_cpu_s"} & set(b):
        b = {**b, **{k: default[k] for k in ("job_overhead_cpu_s",) if k in default}}
    result = plan(cfg, b)
    gpu = b["device"] == "cuda"
    print(f"sslseg plan: {cfg['name']}; throughput from {b['source']} "
          f"({b['device_name']}{', ' + b['date'][:10] if 'date' in b else ''}); "
          f"{result['job_overhead_s']:.1f} s start-up per job"
          + ("" if {"job_overhead_s", "job_overhead_cpu_s"} & set(b) else " (default: no measurement in the file)"))
    dh = "GPU hours (jobs/GPU)" if gpu else ""
    head = f"{'stage':<18}{'jobs':>6}{'images':>15}{'img/s':>10}{'est. hours':>12}{'longest job, min':>18}{dh:>22}"
    print(head.rstrip())
    for stage, r in result["stages"].items():
        rate = "n/a" if r["images_per_s"] is None else f"{r['images_per_s']:.1f}"
        hours = "n/a" if r["hours"] is None else f"{r['hours']:.2f}"
        longest = "n/a" if r["longest_min"] is None else f"{r['longest_min']:.1f}"
        shared = "" if not gpu else "n/a" if r["device_hours"] is None else \
            f"{r['device_hours']:.2f} ({r['gpu_share']})"
        print(f"{stage:<18}{r['jobs']:>6}{r['images']:>15,}{rate:>10}{hours:>12}{longest:>18}{shared:>22}".rstrip())
    print(f"{'total':<18}{sum(r['jobs'] for r in result['stages'].values()):>6}{'':>25}{result['total_hours']:>12.2f}"
          "   (jobs one after another on one device; n devices at once divide it by up to n)")
    eff = "n/a" if result["efficiency"] is None else f"{result['efficiency']:.2f}"
    if gpu:
        print(f"estimated GPU-hours: {result['device_hours']:.2f} (rules with a GPU; resources.<rule>.gpu_share jobs "
              f"share one); predicted whole-grid efficiency {eff} (training step time / GPU time)")
    else:
        print(f"predicted whole-grid efficiency: {eff} (training step time / the jobs' time)")
    print(f"suggested resources.<rule>.runtime (minutes; longest job x {HEADROOM}, with start-up and compile):")
    for key, minutes in result["runtime"].items():
        have = rule_resources(cfg, key)["runtime"]
        flag = "  <- too short: jobs would be killed" if have < minutes else ""
        print(f"  {key + ':':<14}{minutes:>6}   (configured: {have}){flag}")
    return result
