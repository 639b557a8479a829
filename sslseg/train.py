"""The one training loop. Every stage (pretrain, intermediate, fine-tune) runs through `fit`.

The budget is `epochs`, or `iterations` steps (the last epoch then stops part-way);
the learning rate of every step is `sslseg.optim.lr_at(step)`, set on each param
group before the step. Per epoch the loop seeds the global RNG and the batch order
from (seed, epoch), so a run resumed from an epoch checkpoint continues exactly as
an uninterrupted one would (bitwise on CPU). Checkpoints are written atomically
every `checkpoint_every` epochs; a stage restarted with the same settings and inputs (what
it starts from and trains on: the stage passes them, sslseg.stages.train) resumes from the
last one, otherwise it starts over. `runtime` settings
(log_every, checkpoint_every, memory_gb, gpu_memory_gb: how, not what, is computed) are left out
of that comparison.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from contextlib import closing, nullcontext
from itertools import islice
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from tqdm import tqdm

from sslseg.data.loader import Batches
from sslseg.io import UserError, atomic_path, save_torch
from sslseg.optim import freeze, lr_at, make_optimizer, total_steps

__all__ = ["autocast", "fingerprint", "fit", "make_generator", "make_optimizer", "pick_device", "train_step",
           "use_compile"]

Transform = Callable[[dict, torch.Generator | None], dict]


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device: {name!r} asked for but CUDA is not available here; use 'auto' or 'cpu'")
    return torch.device(name)


COMPILE_MIN_IMAGE_STEPS = 2_000_000  # train.compile_min_image_steps' default (the schema says why)


def use_compile(setting: str | bool, device: torch.device, image_steps: int,
                min_image_steps: int = COMPILE_MIN_IMAGE_STEPS) -> bool:
    """Whether a job of `image_steps` (its steps x batch, from the first to the last) compiles its step.

    `auto`: on CUDA only, and only for jobs of at least `min_image_steps`
    (train.compile_min_image_steps): a cold compile costs ~36 s (BENCHMARKS.md), which a short
    job never wins back. Off the GPU, never: on 2 CPU cores the compiled step measured +4 %
    (SimMIM) and -9 % (fine-tune) against eager. `true` forces it anywhere. The planner and
    the benchmark ask the same question the loop does."""
    if setting == "auto":
        return device.type == "cuda" and image_steps >= min_image_steps
    return bool(setting)


def compile_step(objective: torch.nn.Module) -> torch.nn.Module:
    """The objective compiled as every compiled job runs it. Static shapes: the one short batch
    of an epoch (drop_last false: the intermediate step, fine-tunes) gets a second graph of its
    own, and the full batches keep theirs; by default that second shape would recompile into
    one dynamic-shape graph, slower for every batch after it."""
    return torch.compile(objective, dynamic=False)


def autocast(setting: str, device: torch.device):
    """`auto`: bf16 on CUDA; fp32 on CPU, where bf16 autocast measured slower."""
    if setting == "bf16" or (setting == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def make_generator(device: torch.device, seed: int) -> torch.Generator | None:
    """A generator on `device` seeded `seed`, so the step draws its randomness where its batch is
    (no host draw and copy). On the CPU it is the generator the loop has always used: the same
    draws, bitwise. None where the device type has no generators (`meta`): draws then use the
    global RNG."""
    if device.type == "meta":  # checked, not caught: a CUDA failure must still raise
        return None
    return torch.Generator(device=device).manual_seed(seed)


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_log(path: Path, rows: list[dict]) -> None:
    """The history as CSV, a column per key of any row (a run resumed with validation turned on
    has val_* only in its later rows; the others leave them empty)."""
    fields = list(dict.fromkeys(k for row in rows for k in row)) or ["epoch"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def train_step(step_fn: Callable, opt: torch.optim.Optimizer, batch: dict, gen: torch.Generator | None,
               amp: str, device: torch.device) -> torch.Tensor:
    """One update on an augmented batch; returns the detached loss (no host sync).
    Shared by `fit` and sslseg.bench, so the benchmark times exactly this step. `gen`: on the
    batch's device (`make_generator`), or None for the global RNG; a CPU generator with a CUDA
    batch is an error, not a silent host draw. tests/test_host_syncs.py checks, on the meta
    device, that it and the transform keep every tensor on the batch's device."""
    draw = getattr(step_fn, "draw", None)  # (a compiled module hands attributes to its own, uncompiled)
    if draw is not None:  # the objective's random inputs (masks, noise) drawn outside the compiled
        batch = draw(batch, gen)  # forward: a generator argument would break it into several graphs
    with autocast(amp, device):
        loss, _ = step_fn(batch, gen)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def fit(objective: nn.Module, batches: Batches, transform: Transform, settings: dict, *, runtime: dict,
        name: str, resume_path: Path, log_path: Path, validate: Callable[[nn.Module], dict] | None = None,
        inputs: dict | None = None) -> dict:
    """Train `objective` (forward(batch, gen) → (loss, outputs)) for the budget in `settings`.

    settings: a training stage's (see the schema's $defs/optim): epochs, iterations, lr,
    optimizer, momentum, weight_decay, schedule, milestones, gamma, warmup, freeze, seed,
    compile, amp. runtime: log_every, checkpoint_every (and any other key that cannot
    change a result; none of them is part of the resume fingerprint). `inputs`: what else a
    resume file must have been written with (JSON-able: the files the run starts from and reads,
    its rows, the code), so a stage rerun after its upstream stage changed starts over instead
    of continuing from the old start. Returns
    {"history": [one row per epoch], "images_per_s", "device", "compiled", "steps", "startup_cpu_s"
    (the process's CPU seconds before its first step: imports, model, data; for a warm-start
    job, sslseg.warm, its child's since the fork)}; a history
    row (and a line of the log CSV) holds epoch, mean loss, the lr of the epoch's last step,
    images_per_s and seconds. `validate` (objective → {column: value}, e.g. sslseg.validate's
    val_loss, val_miou, val_pixel_acc): called after every epoch, its columns and val_seconds
    join that epoch's row. It cannot change the training: every epoch reseeds the global RNG and
    the batch generator, and it runs with the CPU RNG state forked, so the losses are those of a
    run without it (a test checks), and a resume continues either.

    On CUDA the only host sync of the loop is the loss read every `log_every` steps (and once
    per epoch): batches are gathered on the device, and augmentation, masks, noise and MixUp
    are drawn there from the epoch's device generator (`make_generator`) or its global RNG.
    tests/test_host_syncs.py checks this on the CPU; on a GPU the smoke test counts the syncs
    with torch.cuda.set_sync_debug_mode("warn") (sslseg.bench.gpu_smoke).
    """
    device = batches.device
    objective.to(device)
    frozen = freeze(objective, settings["freeze"], name)
    opt = make_optimizer(objective, settings, device)
    per_epoch = len(batches)
    if per_epoch == 0:
        raise UserError(f"{name}.batch_size: {batches.batch_size} is larger than the {batches.n} training images; lower it")
    budget = total_steps(settings, per_epoch)
    epochs = -(-budget // per_epoch)
    start, history = 0, []
    # runtime settings are not in it: changing them keeps a resume valid
    key = fingerprint(settings if inputs is None else {"settings": settings, "inputs": inputs})
    if resume_path.exists():
        state = torch.load(resume_path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") == key:
            objective.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start, history = state["epoch"], state["history"]
            print(f"[{name}] resuming from {resume_path} at epoch {start}", flush=True)
        else:
            print(f"[{name}] ignoring {resume_path}: written with other settings, inputs or code", flush=True)

    step_fn = objective
    # the whole job's image-steps, not those left: a resumed job compiles as its first start did,
    # so its numbers do not depend on where it was stopped (a compiled step's rounding differs)
    if use_compile(settings["compile"], device, budget * batches.batch_size,
                   settings.get("compile_min_image_steps", COMPILE_MIN_IMAGE_STEPS)):
        step_fn = compile_step(objective)
    log_every = runtime["log_every"]
    seen_total, time_total, startup_cpu = 0, 0.0, None
    # one generator for the job, reseeded every epoch (the same draws as a new one each epoch): a
    # compiled step keeps seeing the same object, which torch.compile would otherwise guard on
    gen = make_generator(device, 0)
    for epoch in range(start, epochs):
        first, steps = epoch * per_epoch, min(per_epoch, budget - epoch * per_epoch)
        epoch_seed = settings["seed"] * 100_003 + epoch
        torch.manual_seed(epoch_seed)  # dropout, MixUp: reproducible per epoch, so resumes match
        if gen is not None:  # augmentation, masks, noise: drawn on the device
            gen.manual_seed(epoch_seed)
        objective.train()
        for module in frozen:  # BatchNorm statistics and dropout leave frozen parts as they were
            module.eval()
        loss_sum, seen, t0 = torch.zeros((), device=device), 0, time.perf_counter()
        with closing(batches.epoch(epoch_seed)) as raws:  # closes a streamed pack when the budget ends mid-epoch
            bar = tqdm(islice(raws, steps), total=steps, desc=f"{name} {epoch + 1}/{epochs}",
                       mininterval=5, disable=not runtime["progress"])
            for i, raw in enumerate(bar):
                if startup_cpu is None:  # the job's fixed cost: the process's CPU until its first step
                    startup_cpu = time.process_time()
                lr = lr_at(first + i, per_epoch, settings)
                for group in opt.param_groups:
                    group["lr"] = lr
                loss_sum += train_step(step_fn, opt, transform(raw, gen), gen, settings["amp"], device)
                seen += raw["images"].shape[0]
                if (i + 1) % log_every == 0 or i + 1 == steps:  # the only host sync: every log_every steps
                    mean = loss_sum.item() / (i + 1)
                    if not math.isfinite(mean):
                        raise UserError(
                            f"{name}: non-finite loss ({mean}) at epoch {epoch + 1}, step {i + 1} with lr "
                            f"{lr:g}; lower {name}.lr or check the input data"
                        )
                    bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        dt = time.perf_counter() - t0
        seen_total, time_total = seen_total + seen, time_total + dt
        row = {"epoch": epoch + 1, "loss": loss_sum.item() / steps, "lr": lr,
               "images_per_s": round(seen / dt, 2), "seconds": round(dt, 3)}
        if validate is not None:
            t1 = time.perf_counter()
            with torch.random.fork_rng(devices=[]):
                row.update(validate(objective))
            row["val_seconds"] = round(time.perf_counter() - t1, 3)
            print(f"[{name}] epoch {epoch + 1}/{epochs}: loss {row['loss']:.4f}, "
                  + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_") and k != "val_seconds"),
                  flush=True)
        history.append(row)
        _write_log(log_path, history)
        if (epoch + 1) % runtime["checkpoint_every"] == 0 and epoch + 1 < epochs:
            save_torch(resume_path, {"fingerprint": key, "epoch": epoch + 1, "history": history,
                                     "model": objective.state_dict(), "optimizer": opt.state_dict()})
    if not history:
        _write_log(log_path, history)
    return {"history": history, "images_per_s": seen_total / time_total if time_total else None,
            "device": str(device), "compiled": step_fn is not objective, "steps": budget,
            "startup_cpu_s": None if startup_cpu is None else round(startup_cpu, 3)}
