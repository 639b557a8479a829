"""`python -m sslseg plan`: how long the configured grid takes, before anyone submits it.

Counts the images each job pushes through its step (as `fit` runs them: whole batches
only, every epoch) or reads (evaluation, packing), and divides by the images/s that
`python -m sslseg.bench` measured (BENCHMARKS.json), scaled from the benchmarked model to
the configured one. Without a benchmark file it times the SimMIM and segmentation steps
here for a few seconds instead. Prints per-stage hours and a `resources: runtime` per rule.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from sslseg import grid
from sslseg.config import load_config, model_settings, rule_resources, stage_settings
from sslseg.io import UserError

ROOT = Path(__file__).resolve().parents[1]
# Published sizes, used until the workflow has packed the real sets (their packs are then read);
# pets: the images its trainval and test lists name, which is what pack_pets packs.
OFFICIAL = {"pets": 7_349, "intermediate_train": 14_034, "intermediate_test": 3_000}
STARTUP_S = 10  # per job: imports, reading the pack, checkpoints (4-5 s measured on CPU; CUDA init adds some)
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


def jobs_of(cfg: dict, device_type: str = "cpu", root: Path = Path(".")) -> dict[str, list[tuple[int, str | None]]]:
    """Per stage, (images, backbone) of each job (image-steps for training, images read
    otherwise; no backbone for packing), for exactly the jobs the workflow runs: the runs and
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

    def steps(stage: str, run, n: int) -> tuple[int, str]:
        return _image_steps(n, scale_for_device(stage_settings(cfg, stage, run), device)), run.backbone

    jobs: dict[str, list[tuple[int, str | None]]] = {k: [] for k in STAGES}
    packed = {}  # pretraining pack per data set: its largest size
    for run in pretrained.values():
        packed[run.data] = max(packed.get(run.data, 0), run.pretrain)
    jobs["pack"] = [(n, None) for n in (sizes["pets"], *packed.values())]
    jobs["pretrain"] = [steps("pretrain", run, run.pretrain) for run in pretrained.values()]
    if inter:
        jobs["pack"] += [(sizes["intermediate_train"], None), (sizes["intermediate_test"], None)]
        jobs["intermediate"] = [steps("intermediate", run, sizes["intermediate_train"]) for run in inter.values()]
        jobs["intermediate_eval"] = [(sizes["intermediate_test"], run.backbone) for run in inter.values()]
    downstream = grid.by_path(runs, grid.run_dir).values()
    for run in downstream:  # fine-tunes and probes
        n = grid.resolve_size(run.finetune, pool)
        s = scale_for_device(stage_settings(cfg, run.adaptation, run), device)
        jobs["finetune"].append((_image_steps(n, s) + val * _epochs(n, s) // 3, run.backbone))
    jobs["evaluate"] = [(test, run.backbone) for run in downstream]
    return jobs


def count_work(cfg: dict, device_type: str = "cpu", root: Path = Path(".")) -> dict[str, dict]:
    """Per stage: jobs, total images and the largest single job."""
    return {k: {"jobs": len(v), "images": sum(n for n, _ in v), "largest": max((n for n, _ in v), default=0)}
            for k, v in jobs_of(cfg, device_type, root).items()}


def _cost(model: dict) -> float:
    """Relative step cost of a model: tokens x backbone parameters (the linear layers dominate
    at these token counts, and both scale the FLOPs per image linearly). `model`: a model
    slice (backbone, image_size, patch_size); benchmark files before the grid axes say preset."""
    from sslseg.models import build_backbone, count_parameters

    model = {"backbone": model["backbone"] if "backbone" in model else model["preset"],
             "image_size": model["image_size"], "patch_size": model["patch_size"]}
    tokens = (model["image_size"] // model["patch_size"]) ** 2 + 1
    return tokens * count_parameters(build_backbone(model))


def measure(cfg: dict, seconds: float = 4.0) -> dict:
    """A short stand-in for BENCHMARKS.json: the SimMIM and segmentation model steps (eager,
    random batches already on the device) at the configured size; evaluation taken as 3x the
    segmentation step (forward only is about a third of forward + backward)."""
    import torch

    from sslseg.bench.timing import step_rate
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
        size, bs = s["model"]["image_size"], s["batch_size"]
        batch = {"images": torch.randn(bs, 3, size, size, device=device),
                 "masks": torch.randint(0, 3, (bs, size, size), device=device)}
        model = build_objective(s["objective"], s)
        rates[key] = {"images_per_s": step_rate(model, batch, s, device, seconds), "threads": torch.get_num_threads()}
        models[key[2:]] = {**s["model"], "compile": False}  # the model measured: the planner scales from it
    rates["evaluate"] = {**rates["a_finetune"], "images_per_s": 3 * rates["a_finetune"]["images_per_s"]}
    models.setdefault("simmim", models["finetune"])  # nothing pretrains: no simmim rate to scale
    return {"device": device.type, "device_name": str(device), "cpus": os.cpu_count(), "measurements": rates,
            "compile_s": {}, "settings": models,
            "source": f"a {seconds:g}-s measurement per step here (eager; run python -m sslseg.bench for better figures)"}


def load_bench(path: str | None) -> dict | None:
    candidates = [Path(path)] if path else [Path("BENCHMARKS.json"), ROOT / "BENCHMARKS.json"]
    for p in candidates:
        if p.exists():
            try:
                return {**json.loads(p.read_text()), "source": str(p)}
            except json.JSONDecodeError as e:
                raise UserError(f"{p}: not a benchmark JSON ({e}); rerun python -m sslseg.bench --json {p}") from None
    if path:
        raise UserError(f"{path}: benchmark file not found; write it with python -m sslseg.bench --json {path}")
    return None


def plan(cfg: dict, bench: dict, root: Path = Path(".")) -> dict:
    """Stage rows (jobs, images, images/s, hours, longest job's minutes) and suggested runtimes.

    A job takes start-up + (compile time, if train.use_compile would compile it) + images / rate,
    where rate is the benchmark's, scaled to the configured model, and for training jobs that
    would not be compiled while the benchmark was, converted with the measured eager/compiled ratio."""
    import torch

    from sslseg.train import use_compile

    device, m = torch.device(bench["device"]), bench["measurements"]
    costs: dict[str, float] = {}  # per backbone: every job is scaled to its own model
    rows, runtime = {}, {}
    for stage, jobs in jobs_of(cfg, bench["device"], root).items():
        res_key, meas = STAGES[stage]
        if not jobs:
            continue
        task = "simmim" if meas == "a_simmim" else "finetune"
        threads = 1.0
        if bench["device"] == "cpu":  # CPU throughput follows the threads the rule gives its job
            res = rule_resources(cfg, res_key)
            measured = m.get(meas, {}).get("threads") or bench["settings"][task].get("threads")
            threads = min(res["threads"], bench.get("cpus") or res["threads"]) / measured if measured else 1.0
        reference = _cost(bench["settings"][task])  # the benchmarked model's cost, once per stage
        seconds, step_s = [], 0.0
        for n, backbone in jobs:
            if backbone is not None and backbone not in costs:
                costs[backbone] = _cost(model_settings(cfg, backbone))
            scale = threads * (1.0 if backbone is None else reference / costs[backbone])
            rate = m[meas]["images_per_s"] * scale if meas in m else None
            compiled = meas.startswith("a_") and use_compile(cfg["train"]["compile"], device, n)
            r, extra = rate, STARTUP_S
            if meas.startswith("a_") and bench["settings"][task].get("compile") and not compiled and f"e_{task}" in m:
                r = rate * m[f"e_{task}"]["images_per_s"] / m[f"c_{task}"]["images_per_s"]
            if compiled:
                extra += bench["compile_s"].get(task, 0)
            seconds.append(None if r is None else n / r + extra)
            step_s += 0 if r is None else n / r
        known = None not in seconds
        images = sum(n for n, _ in jobs)  # the stage's rate: its images over its steps' time, all backbones
        rows[stage] = {"jobs": len(jobs), "images": images, "images_per_s": images / step_s if step_s > 0 else None,
                       "hours": sum(seconds) / 3600 if known else None,
                       "longest_min": max(seconds) / 60 if known else None}
        if known:
            runtime[res_key] = max(runtime.get(res_key, 0), max(1, math.ceil(HEADROOM * max(seconds) / 60)))
    total = sum(r["hours"] for r in rows.values() if r["hours"] is not None)
    return {"stages": rows, "total_hours": total, "runtime": runtime}


def print_plan(config: str = "config.yaml", configfile: str | None = None, bench: str | None = None) -> dict:
    """Estimate the wall time of the configured grid on this device (BENCHMARKS.json, or a short
    measurement here), per stage, with a suggested resources.<rule>.runtime."""
    cfg = load_config(config, configfile)
    bench = load_bench(bench) or measure(cfg)
    result = plan(cfg, bench)
    print(f"sslseg plan: {cfg['name']}; throughput from {bench['source']} "
          f"({bench['device_name']}{', ' + bench['date'][:10] if 'date' in bench else ''})")
    print(f"{'stage':<18}{'jobs':>6}{'images':>15}{'img/s':>10}{'est. hours':>12}{'longest job, min':>18}")
    for stage, r in result["stages"].items():
        rate = "n/a" if r["images_per_s"] is None else f"{r['images_per_s']:.1f}"
        hours = "n/a" if r["hours"] is None else f"{r['hours']:.2f}"
        longest = "n/a" if r["longest_min"] is None else f"{r['longest_min']:.1f}"
        print(f"{stage:<18}{r['jobs']:>6}{r['images']:>15,}{rate:>10}{hours:>12}{longest:>18}")
    print(f"{'total':<18}{sum(r['jobs'] for r in result['stages'].values()):>6}{'':>25}{result['total_hours']:>12.2f}"
          "   (jobs one after another on one device; n devices at once divide it by up to n)")
    print(f"suggested resources.<rule>.runtime (minutes; longest job x {HEADROOM}, with start-up and compile):")
    for key, minutes in result["runtime"].items():
        have = rule_resources(cfg, key)["runtime"]
        flag = "  <- too short: jobs would be killed" if have < minutes else ""
        print(f"  {key + ':':<14}{minutes:>6}   (configured: {have}){flag}")
    return result
