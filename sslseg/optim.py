"""What the training loop optimises and at which learning rate: optimizer, per-step LR, freezing.

The LR is a pure function of the global step (`lr_at`), set on every step by
`sslseg.train.fit`; no scheduler object holds state, so a resumed run only needs
the step to be back on the same schedule.

Budget units: with `iterations: 0` the budget is `epochs`, and `milestones` and
`warmup` count epochs; with `iterations > 0` the budget is that many steps, and
they count steps.
"""

from __future__ import annotations

import inspect
import math
from collections import Counter

import torch
import torch.nn as nn

from sslseg.io import UserError

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def make_optimizer(objective: nn.Module, settings: dict, device: torch.device) -> torch.optim.Optimizer:
    """settings["optimizer"] over the parameters that require a gradient (frozen ones get no
    state), in `parameters()` order; fused kernels on CUDA where torch has them."""
    named = [(n, p) for n, p in objective.named_parameters() if p.requires_grad]
    if not named:
        raise UserError(f"{settings['stage']}.freeze: every parameter is frozen; nothing is left to train")
    cls = OPTIMIZERS[settings["optimizer"]]
    kwargs = {"lr": settings["lr"], "weight_decay": settings["weight_decay"]}
    if settings["optimizer"] == "sgd":
        kwargs["momentum"] = settings["momentum"]
    if "fused" in inspect.signature(cls).parameters:
        kwargs["fused"] = device.type == "cuda"
    if not settings["wd_exclusions"]:
        return cls([p for _, p in named], **kwargs)
    skip = [p for n, p in named if no_weight_decay(n, p)]
    decay = [p for n, p in named if not no_weight_decay(n, p)]
    groups = [g for g in ({"params": decay}, {"params": skip, "weight_decay": 0.0}) if g["params"]]
    return cls(groups, **kwargs)


NO_DECAY_NAMES = ("pos_embed", "cls_token")  # microsoft/SimMIM's ViT's no_weight_decay() (its mask token decays)


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """microsoft/SimMIM optimizer.py (get_pretrain_param_groups): 1-D parameters (norm weights,
    biases), any `.bias`, and its ViT's no_weight_decay() names (position embedding, class
    token) get no weight decay."""
    return param.ndim <= 1 or name.endswith(".bias") or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES


def total_steps(settings: dict, steps_per_epoch: int) -> int:
    """The budget in optimizer steps: `iterations`, or `epochs` full epochs."""
    return settings["iterations"] or settings["epochs"] * steps_per_epoch


def lr_at(step: int, steps_per_epoch: int, settings: dict) -> float:
    """The learning rate of global step `step` (0-based).

    multistep: lr, multiplied by gamma at each milestone passed, in the order and by the
    same float operations as torch's MultiStepLR (lr * g**count per distinct milestone,
    successively), so an epoch budget gives its LR floats exactly, changing at epoch
    boundaries. cosine: 0.5 * lr * (1 + cos(pi * t / T)) per step, t and T counted after
    the warm-up (so the peak is lr where the ramp ends; T = budget - warm-up steps).
    warmup (W steps: `warmup`, times steps_per_epoch with an epoch budget): the LR is
    multiplied by (step + 1) / W on steps 0..W-1, so the first step trains and step W-1
    reaches the schedule's value.
    """
    per_step = settings["iterations"] > 0
    unit = step if per_step else step // steps_per_epoch  # the unit milestones count in
    warm = settings["warmup"] * (1 if per_step else steps_per_epoch)
    lr = settings["lr"]
    if settings["schedule"] == "multistep":
        for milestone, count in sorted(Counter(settings["milestones"]).items()):
            if milestone <= unit:
                lr = lr * settings["gamma"] ** count
    else:
        span = max(1, total_steps(settings, steps_per_epoch) - warm)
        t = min(max(0, step - warm), span)
        lr = 0.5 * lr * (1 + math.cos(math.pi * t / span))
    if step < warm:
        lr = lr * (step + 1) / warm
    return lr


def freeze(model: nn.Module, prefixes: list[str], stage: str) -> list[nn.Module]:
    """Stop the gradient of every parameter whose name starts with one of `prefixes`.

    Returns the modules whose parameters are all frozen: the loop keeps them in eval()
    so BatchNorm statistics and dropout leave a frozen part exactly as it was."""
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(n.startswith(prefix) for n in names):
            roots = sorted({n.split(".")[0] + ("." if "." in n else "") for n in names})
            raise UserError(f"{stage}.freeze: prefix {prefix!r} matches no parameter; "
                            f"parameters start with: {', '.join(roots)}")
    if not prefixes:
        return []
    for n, p in model.named_parameters():
        if n.startswith(tuple(prefixes)):
            p.requires_grad_(False)
    frozen = []
    for name, module in model.named_modules():
        params = [n for n, _ in module.named_parameters(prefix=name)]
        if params and all(n.startswith(tuple(prefixes)) for n in params):
            frozen.append(module)
    return frozen


LR_FACTORS = {"linear": lambda m: m, "sqrt": lambda m: m**0.5, "none": lambda m: 1}


def device_scaling(settings: dict, device: torch.device, images: int | None = None) -> dict:
    """How a stage's batch and LR change on `device`: on CUDA, the batch times the stage's
    train.cuda_batch_multiplier (sslseg.config.stage_multiplier resolves it per stage), capped so
    the batch never exceeds the `images` the stage trains on (a multiplied batch larger than the
    set would train on nothing, or on one short batch), and the LR times the factor of
    train.lr_scaling at the multiplier applied. `images` None (a planner's estimate): no cap.
    A step budget (`iterations` > 0) is divided by the multiplier, so the stage sees the images
    the protocol gives it, not m times as many (an epoch budget needs nothing: an epoch has
    1/m of the steps); its step milestones and warm-up are divided with it.

    Returns multiplier (applied), requested (the setting), base_batch_size, batch_size,
    lr_scaling, lr_factor, base_lr, lr, base_iterations and iterations (0: an epoch budget):
    what the stage's sidecar records."""
    requested = settings["cuda_batch_multiplier"] if device.type == "cuda" else 1
    b = settings["batch_size"]
    m = requested if images is None else max(1, min(requested, images // b))
    factor = LR_FACTORS[settings["lr_scaling"]](m) if m > 1 else 1
    steps = settings["iterations"]
    return {"multiplier": m, "requested": requested, "base_batch_size": b, "batch_size": b * m,
            "lr_scaling": settings.get("lr_scaling"), "lr_factor": factor, "base_lr": settings["lr"],
            "lr": settings["lr"] * factor, "base_iterations": steps, "iterations": _per_multiplier(steps, m)}


def _per_multiplier(steps: int, m: int) -> int:
    """A count of steps at m times the batch: the same images (at least one step if any)."""
    return max(1, round(steps / m)) if steps > 0 else steps


def scale_for_device(settings: dict, device: torch.device, images: int | None = None) -> dict:
    """`settings` with the batch and LR of `device_scaling`; unchanged where its multiplier is 1."""
    s = device_scaling(settings, device, images)
    m = s["multiplier"]
    if m == 1:
        return settings
    scaled = {**settings, "batch_size": s["batch_size"], "lr": s["lr"]}
    if settings["iterations"] > 0:  # milestones and warm-up count steps too: the same images
        scaled.update(iterations=s["iterations"], warmup=_per_multiplier(settings["warmup"], m),
                      milestones=[_per_multiplier(x, m) for x in settings["milestones"]])
    return scaled
