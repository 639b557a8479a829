"""No host syncs in the training step (issue 13), checked on the CPU with the `meta` device.

A meta tensor has a device but no data, so a step run on meta shows where each of its tensors
lives: a random draw made on the host (then copied over), a constant built from host data, an
index moved per step, would put a CPU tensor into the step or build one from Python data; and
reading a value (`.item()`, `float(t)`, a Python `if` on a tensor) raises on meta outright. On
CUDA each of those is a host↔device round trip; torch.cuda.set_sync_debug_mode confirms it
there (a GPU script does that).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from sslseg.data.augment import make_transform
from sslseg.data.loader import Batches
from sslseg.objectives import build_objective
from sslseg.optim import make_optimizer
from sslseg.train import make_generator, train_step

META = torch.device("meta")
VINY = dict(backbone="viny", image_size=32, patch_size=16)
SIMMIM_AUG = dict(scale=[0.67, 1.0], ratio=[0.75, 1.3333], flip=0.5, jitter=0.4)  # config.yaml's crops
FINETUNE_AUG = dict(scale=[1.0, 1.0], ratio=[1.0, 1.0], flip=0.5, jitter=0.4)
MAE_AUG = dict(scale=[0.5, 1.0], ratio=[0.75, 1.3333], flip=0.5, jitter=0.4)
OPTIM = dict(stage="test", optimizer="adamw", momentum=0.9, lr=1e-3, weight_decay=1e-4, wd_exclusions=False,
             freeze=[])
CASES = {  # objective: (settings, the label key its transform keeps, the stage's augmentation)
    "simmim": (dict(model=VINY, mask_ratio=0.5), None, SIMMIM_AUG),
    "segment": (dict(model=VINY, classes=3, dropout=0.1), "masks", SIMMIM_AUG),
    "segment_unet": (dict(model=VINY, classes=3, dropout=0.1, head="unet"), "masks", FINETUNE_AUG),
    "mae": (dict(model=VINY, mask_ratio=0.75, decoder="small"), None, MAE_AUG),
    "dep": (dict(model=VINY, sigma=0.22, gamma_range=[0.9, 0.95]), None, FINETUNE_AUG),
    "ddep": (dict(model=VINY, sigma=0.22, gamma_range=[]), None, FINETUNE_AUG),
    "classify": (dict(model=VINY, classes=3, dropout=0.1, mixup_alpha=0.2), "labels", FINETUNE_AUG),
}


def test_every_objective_is_checked_here():
    """A new objective file joins these checks (its entry in CASES), or this fails."""
    from sslseg.objectives import available

    assert set(available()) <= {name.split("_")[0] for name in CASES}


class OffDevice(TorchDispatchMode):
    """Records every op with a tensor (argument or result) that is not on `device`.

    Inside the optimizer's step (`in_step`, set by its hooks) a 0-d CPU tensor is allowed:
    make_optimizer fuses AdamW only on CUDA, whose fused kernel keeps each parameter's step
    count on the device; the unfused path it takes on meta keeps the counts as 0-d CPU tensors
    and reads them there, which touches no device."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device, self.in_step, self.found = device, False, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._sample_dirichlet.default and args[0].device.type == "meta":
            out = torch.empty_like(args[0])  # MixUp's Beta draw has no meta kernel; a kernel's result lies here
        else:
            out = func(*args, **kwargs)
        for t in tree_flatten((args, kwargs, out))[0]:
            if isinstance(t, torch.Tensor) and t.device != self.device:
                if not (self.in_step and t.device.type == "cpu" and t.dim() == 0):
                    self.found.append(f"{func} on {t.device} {tuple(t.shape)}{' in opt.step' if self.in_step else ''}")
        return out


class HostData(TorchFunctionMode):
    """Records calls that build a tensor from Python or NumPy data, which the dispatcher never sees
    (torch.tensor(..., device=d) copies from the host into d in one call)."""

    FACTORIES = {torch.tensor, torch.as_tensor, torch.asarray, torch.from_numpy, torch.Tensor.new_tensor}

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.FACTORIES:
            self.found.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def raw_batch(device: torch.device, b: int = 4, px: int = 40) -> dict:
    """A uint8 batch as Batches yields it: packed images larger than the model's, the originals'
    aspect ratios (the crop uses them), trimaps and class labels."""
    return {"images": torch.empty(b, px, px, 3, dtype=torch.uint8, device=device),
            "aspect": torch.empty(b, device=device),
            "masks": torch.empty(b, px, px, dtype=torch.uint8, device=device),
            "labels": torch.empty(b, dtype=torch.long, device=device)}


@pytest.mark.parametrize("name", CASES)
def test_a_training_step_keeps_every_tensor_on_the_batch_device(name):
    settings, label, aug = CASES[name]
    torch.manual_seed(0)
    objective = build_objective(name.split("_")[0], settings).to(META).train()
    opt = make_optimizer(objective, OPTIM, META)
    transform, gen = make_transform(aug, VINY["image_size"], label), make_generator(META, 0)
    audit = OffDevice(META)
    opt.register_step_pre_hook(lambda *_: setattr(audit, "in_step", True))
    opt.register_step_post_hook(lambda *_: setattr(audit, "in_step", False))
    with audit:  # the first step may build what is then cached (constants, optimizer state) ...
        train_step(objective, opt, transform(raw_batch(META), gen), gen, "none", META)
    with audit, HostData() as host:  # ... a later one nothing
        train_step(objective, opt, transform(raw_batch(META), gen), gen, "none", META)
    assert audit.found == [], f"{name}: tensors off the batch's device in the step: {sorted(set(audit.found))}"
    assert host.found == [], f"{name}: tensors built from host data in every step: {host.found}"


def test_an_epoch_moves_its_order_to_the_rows_once(tmp_path: Path):
    pack = tmp_path / "pack.h5"
    with h5py.File(pack, "w") as f:
        f["images"] = np.zeros((12, 8, 8, 3), np.uint8)
        f["masks"] = np.zeros((12, 8, 8), np.uint8)
    batches = Batches(pack, None, 4, META, ("images", "masks"))
    batches.arrays = {k: v.to(META) for k, v in batches.arrays.items()}  # where __init__ keeps them on CUDA
    raws = batches.epoch(0)
    next(raws)  # the first step also builds the epoch's order and moves it, once
    with OffDevice(META) as audit:
        rest = list(raws)
    assert len(rest) == 2 and all(v.device == META for raw in rest for v in raw.values())
    assert audit.found == [], f"per-step work off the device: {sorted(set(audit.found))}"


def test_make_generator_is_the_loops_cpu_generator_on_cpu_and_none_on_meta():
    gen = make_generator(torch.device("cpu"), 7)
    assert torch.equal(torch.rand(5, generator=gen), torch.rand(5, generator=torch.Generator().manual_seed(7)))
    assert make_generator(META, 7) is None  # no generators there: draws fall back to the global RNG


@pytest.mark.parametrize("name", CASES)
def test_a_compiled_step_is_one_graph_with_the_loops_generator(name):
    """torch.compile cannot trace a draw that takes a generator: it would break the step into
    several graphs (each break a host round trip of Python between them). The objective's draws
    (masks, noise) are made by its `draw`, outside the compiled forward (sslseg.train.train_step),
    so the compiled step is one graph, and a second step compiles nothing more. On the CPU with a
    recording backend: dynamo's tracing is the same for every device."""
    from torch._dynamo.utils import counters

    settings, label, aug = CASES[name]
    torch.manual_seed(0)
    objective = build_objective(name.split("_")[0], settings).train()
    cpu = torch.device("cpu")
    opt = make_optimizer(objective, OPTIM, cpu)
    transform, gen = make_transform(aug, VINY["image_size"], label), make_generator(cpu, 0)
    graphs = []
    torch._dynamo.reset()
    counters.clear()
    step_fn = torch.compile(objective, dynamic=False, backend=lambda gm, _: graphs.append(gm) or gm.forward)
    raw = {k: v.zero_() for k, v in raw_batch(cpu).items()}
    raw["images"].random_(0, 256, generator=torch.Generator().manual_seed(0)), raw["aspect"].fill_(1.0)
    for _ in range(2):
        train_step(step_fn, opt, transform(raw, gen), gen, "none", cpu)
    breaks = dict(counters["graph_break"])
    torch._dynamo.reset()
    assert breaks == {}, f"{name}: graph breaks {list(breaks)[:2]}"
    assert len(graphs) == 1, f"{name}: {len(graphs)} graphs"
