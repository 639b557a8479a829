"""One measurement set per task: the training steps a-e, evaluation, packing.

Every setting comes from the workflow's own config path (sslseg.config) for the grid's
first run, so a bench on a config measures what that config's jobs would run.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from sslseg import grid
from sslseg.bench.data import baseline_settings, pre_resize, user_loader
from sslseg.bench.timing import children_hwm_mb, count_flops, interleaved, status_kb
from sslseg.config import eval_settings, rule_resources, runtime_settings, stage_settings
from sslseg.data.loader import Batches
from sslseg.data.pack import pack, read_pack
from sslseg.data.sources import Record
from sslseg.io import UserError
from sslseg.data.augment import make_transform
from sslseg.models.predict import predict_classes
from sslseg.objectives import build_objective
from sslseg.optim import make_optimizer, scale_for_device, total_steps
from sslseg.train import compile_step, make_generator, train_step, use_compile

# Task (the key of every figure in the JSON, which the planner reads) → the stage it times.
TASKS = {"simmim": "pretrain", "finetune": "finetune"}
QUICK = {"image_size": 32, "batch_size": 8}  # --quick: a model small enough to time in seconds


def task_settings(cfg: dict, task: str, device: torch.device, quick: bool = False) -> dict:
    """The stage settings the workflow would run `task` with on `device`, for the grid's first
    run of that stage (for pretraining, the first that pretrains)."""
    run = grid.first_run(cfg, TASKS[task])
    if run is None:
        raise UserError("grid: no run pretrains (grid.pretrain_sizes holds only 0, or no backbone can run "
                        "grid.objectives), so there is no pretraining step to benchmark")
    stage = run.adaptation if TASKS[task] == "finetune" else TASKS[task]  # a probe-only grid times its probe
    s = scale_for_device(stage_settings(cfg, stage, run), device)
    if quick:
        s = {**s, "model": {**s["model"], "image_size": QUICK["image_size"]}, "batch_size": QUICK["batch_size"]}
    return s


def set_threads(cfg: dict, rule: str, quick: bool) -> int:
    """The rule's `threads` (what --threads gives its job), capped at this machine's cores. --quick
    uses 1: a 2-thread step on cores that others keep busy stalls at every OpenMP barrier."""
    n = 1 if quick else min(rule_resources(cfg, rule)["threads"], os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def _forever(batches: Batches) -> Iterator[dict]:
    if len(batches) == 0:  # an epoch without a whole batch would make this loop spin for ever
        raise ValueError(f"{batches.pack}: {batches.n} rows hold no batch of {batches.batch_size}")
    epoch = 0
    while True:
        yield from batches.epoch(epoch)
        epoch += 1


def _longest_job(cfg: dict, task: str, s: dict) -> int:
    """Image-steps of the task's longest job in the grid: what `fit` asks use_compile about."""
    from sslseg.config import pool_size
    from sslseg.sizes import resolve_size

    pool = pool_size(cfg) or 7349 - cfg["data"]["pets"]["test_size"]  # (the real pool: the planner's estimate)
    if task == "simmim":  # counts of images (0: no pretraining)
        size = max(cfg["grid"]["pretrain_sizes"])
    else:  # label budgets: counts, or fractions of the pool
        size = max(resolve_size(v, pool) for v in cfg["grid"]["finetune_sizes"])
    return total_steps(s, max(1, size // s["batch_size"])) * s["batch_size"]


def user_loop(task: str, s: dict, device: torch.device, data: dict, compiled: bool):
    """b's batches, model step, optimizer and `Baseline`: the same model as a, run the way
    `baseline_settings` says a user would on this device type."""
    how = baseline_settings(device, compiled)
    base = build_objective(s["objective"], s).to(device).train()
    opt = torch.optim.AdamW(base.parameters(), lr=s["lr"], weight_decay=s["weight_decay"],
                            **({"fused": True} if how.fused else {}))
    root, records = data["root"], data["records"]
    if how.pre_resize:  # once, before anything is timed, at the side sslseg packs this task at
        root = root / f"resized-{task}"
        records = pre_resize(records, root, data["sizes"][task])
    loader = user_loader(task, records, root, s, device, how.workers)
    return loader, compile_step(base) if how.compile else base, opt, how


def bench_task(task: str, cfg: dict, device: torch.device, data: dict, *, seconds: float, rounds: int,
               warmup: int, quick: bool) -> dict:
    """Measurements a, b, c, d (and s for pretraining, e when a compiles) of one task, in
    interleaved rounds; with the task's FLOPs per image, compile time and settings.
    data: "simmim"/"finetune" pack paths, "records" and "root" of the JPEGs, "sizes" of the packs."""
    s = task_settings(cfg, task, device, quick)
    runtime = runtime_settings(cfg)
    set_threads(cfg, TASKS[task], quick)
    gc.collect()
    base_kb = status_kb("VmRSS")
    torch.manual_seed(0)
    objective = build_objective(s["objective"], s).to(device).train()
    opt = make_optimizer(objective, s, device)
    compiled = not quick and use_compile(s["compile"], device, _longest_job(cfg, task, s), s["compile_min_image_steps"])
    step_fn = compile_step(objective) if compiled else objective
    label = "masks" if task == "finetune" else None
    bs, amp, log_every = s["batch_size"], s["amp"], runtime["log_every"]
    keys = ("images", "aspect") + ((label,) if label else ())  # as the training stage reads them
    batches = Batches(data[task], None, bs, device, keys, runtime["memory_gb"], gpu_memory_gb=runtime["gpu_memory_gb"])
    transform, gen = make_transform(s["augment"], s["model"]["image_size"], label), make_generator(device, 0)
    raws = _forever(batches)
    fixed = transform(next(raws), gen)
    flops = count_flops(objective, fixed, gen)
    loss_sum, n = [torch.zeros((), device=device)], [0]

    def a() -> int:
        loss_sum[0] += train_step(step_fn, opt, transform(next(raws), gen), gen, amp, device)
        n[0] += 1
        if n[0] % log_every == 0:  # fit's one host sync
            loss_sum[0].item()
        return bs

    def c() -> int:
        train_step(step_fn, opt, fixed, gen, amp, device)
        return bs

    def d() -> int:
        transform(next(raws), gen)
        return bs

    user, base_step, base_opt, how = user_loop(task, s, device, data, compiled)

    def b() -> int:
        train_step(base_step, base_opt, next(user), None, how.amp, device)
        return bs

    t0 = time.perf_counter()
    for _ in range(warmup):  # the first compiled call compiles; none of this is timed
        c()
    compile_s = time.perf_counter() - t0
    for step in (a, b, d):  # (b compiles its own model here when a does)
        for _ in range(warmup):
            step()
    steps: dict[str, Callable[[], int]] = {"a": a, "b": b, "c": c, "d": d}
    if task == "simmim":  # large pretraining packs (> runtime.memory_gb) are streamed from HDF5 instead
        # both budgets 0: on CUDA a gpu_memory_gb of null would hold the pack on the GPU instead
        streamed = _forever(Batches(data[task], None, bs, device, ("images",), memory_gb=0, gpu_memory_gb=0))
        steps["s"] = lambda: (transform(next(streamed), gen), bs)[1]
        steps["s"]()
    if compiled:  # the same step uncompiled: whether compiling pays on this device (train.use_compile)
        steps["e"] = lambda: (train_step(objective, opt, fixed, gen, amp, device), bs)[1]
        steps["e"]()
    out = interleaved(steps, seconds, rounds, device, base_kb)
    out["b"]["worker_rss_mb"] = round(children_hwm_mb(), 1)
    user.close()
    del step_fn
    torch._dynamo.reset()
    return {"measurements": out, "flops_per_image": flops, "compile_s": round(compile_s, 1),
            "baseline": dataclasses.asdict(how),
            "settings": {"batch_size": bs, "image_size": s["model"]["image_size"], "patch_size": s["model"]["patch_size"],
                         "backbone": s["model"]["backbone"], "objective": s["objective"],
                         "pack_size": data["sizes"][task], "compile": compiled, "amp": amp,
                         "threads": torch.get_num_threads()}}


def bench_eval(cfg: dict, device: torch.device, data: dict, *, seconds: float, quick: bool) -> dict:
    """predict_classes over the packed pets (host uint8 → device → augment → forward), as evaluate runs."""
    fine = task_settings(cfg, "finetune", device, quick)
    s = {**eval_settings(cfg, fine["model"]["backbone"]), "model": fine["model"], "device": str(device)}
    threads = set_threads(cfg, "evaluate", quick)
    base_kb = status_kb("VmRSS")
    model = build_objective(s["objective"], {**s, "dropout": 0.0})  # untrained: the speed is the same
    images = read_pack(data["finetune"], None, ("images",))["images"]

    def run() -> int:
        return len(predict_classes(model, images, s))

    run()
    return {**interleaved({"evaluate": run}, seconds, 1, device, base_kb)["evaluate"], "threads": threads}


def bench_pack(cfg: dict, records: list[Record], out: Path, size: int, *, seconds: float, quick: bool) -> dict:
    """sslseg's pack of full-size JPEGs (decode + resize + HDF5 write) with the pack rule's threads."""
    threads = set_threads(cfg, "pack", quick)
    plain = [Record(r.name, r.image, None, r.label) for r in records]

    def run() -> int:
        pack(plain, out, size, cfg["data"]["pretrain"]["resize"], threads)  # as pack_pretrain
        return len(plain)

    r = interleaved({"pack": run}, seconds, 1, torch.device("cpu"), status_kb("VmRSS"))["pack"]
    return {**r, "threads": threads}
