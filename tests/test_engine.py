"""The engine on a toy problem: optimizers, per-step LR, iteration budget, freezing, resume."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sslseg.data.loader import Batches
from sslseg.io import UserError
from sslseg.optim import lr_at, make_optimizer, total_steps
from sslseg.train import fit

RUNTIME = {"log_every": 1, "checkpoint_every": 1, "progress": False}
OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


class Toy(nn.Module):
    """Per-pixel 3-class segmentation of which third of the range the red channel is in; with a
    BatchNorm (buffers) and dropout (global RNG), so freezing and resume have something to keep."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.1))
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, batch: dict, gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        return F.cross_entropy(self.head(self.body(batch["images"])), batch["masks"]), {}


def transform(raw: dict, gen: torch.Generator) -> dict:
    """uint8 → float, and a random horizontal flip drawn from the epoch's generator."""
    x, m = raw["images"].permute(0, 3, 1, 2).float() / 255, raw["masks"].long()
    flip = torch.rand(len(x), generator=gen) < 0.5
    return {"images": torch.where(flip[:, None, None, None], x.flip(-1), x),
            "masks": torch.where(flip[:, None, None], m.flip(-1), m)}


def settings_for(**over) -> dict:
    """A complete training stage's settings, as the schema fills them."""
    s = dict(stage="finetune", epochs=3, iterations=0, batch_size=4, optimizer="adamw", momentum=0.9, lr=1e-2,
             weight_decay=1e-4, schedule="multistep", milestones=[2], gamma=0.5, warmup=0, freeze=[], seed=0,
             compile=False, amp="none", wd_exclusions=False, drop_last=True)
    s.update(over)
    return s


def make_pack(path: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f["images"] = images
        f["masks"] = (images[..., 0] // 86).astype(np.uint8)
    return path


def train(tmp: Path, settings: dict, tag: str = "run", runtime: dict = RUNTIME,
          model: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """Fit a fresh Toy (seeded) on tmp/pack.h5; resume state and log under `tag`."""
    pack = tmp / "pack.h5" if (tmp / "pack.h5").exists() else make_pack(tmp / "pack.h5")
    torch.manual_seed(settings["seed"])
    model = model or Toy()
    batches = Batches(pack, None, settings["batch_size"], torch.device("cpu"), ("images", "masks"))
    stats = fit(model, batches, transform, settings, runtime=runtime, name=settings["stage"],
                resume_path=tmp / f"{tag}.resume", log_path=tmp / f"{tag}.csv")
    return model, stats


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def die_after(monkeypatch, cls: type, steps: int) -> None:
    """Make `cls.step` raise KeyboardInterrupt after `steps` updates, as a killed job would."""
    real, calls = cls.step, {"n": 0}

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > steps:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(cls, "step", step)


# --- optimizers -------------------------------------------------------------------------------

@pytest.mark.parametrize("name,lr", [("adamw", 5e-2), ("adam", 5e-2), ("sgd", 0.2)])
def test_each_optimizer_runs_and_lowers_the_loss(tmp_path, name, lr):
    model, stats = train(tmp_path, settings_for(optimizer=name, lr=lr, epochs=8, milestones=[]))
    losses = [row["loss"] for row in stats["history"]]
    assert len(losses) == 8 and losses[-1] < 0.7 * losses[0]
    opt = make_optimizer(model, settings_for(optimizer=name), torch.device("cpu"))
    assert type(opt) is OPTIMIZERS[name]
    assert name != "sgd" or opt.param_groups[0]["momentum"] == 0.9


# --- learning rate ----------------------------------------------------------------------------

@pytest.mark.parametrize("gamma", [0.1, 0.5, 0.3, 2 / 3])
@pytest.mark.parametrize("milestones", [[1, 2], [2, 2, 5], [0, 3, 3, 3, 7], []])
def test_multistep_lr_is_torch_multisteplr_stepped_per_epoch_exactly(gamma, milestones):
    for lr in (1e-3, 0.37):
        s = settings_for(lr=lr, gamma=gamma, milestones=milestones)
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma)
        for epoch in range(10):
            for j in range(3):
                assert lr_at(epoch * 3 + j, 3, s) == opt.param_groups[0]["lr"]  # the same float, not close
            opt.step()  # (no gradient: changes nothing; keeps torch from warning about the order)
            sched.step()
        # with an iteration budget the milestones count steps: MultiStepLR stepped per step
        s = settings_for(lr=lr, gamma=gamma, milestones=milestones, iterations=10)
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma)
        for step in range(10):
            assert lr_at(step, 3, s) == opt.param_groups[0]["lr"]
            opt.step()  # (no gradient: changes nothing; keeps torch from warning about the order)
            sched.step()


@pytest.mark.parametrize("budget", [dict(epochs=4), dict(iterations=17)])
def test_cosine_falls_from_lr_to_zero_monotonically(budget):
    s = settings_for(schedule="cosine", lr=0.1, **budget)
    steps = total_steps(s, 5)
    assert steps == budget.get("iterations") or steps == 20
    lrs = [lr_at(i, 5, s) for i in range(steps + 1)]
    assert lrs[0] == 0.1 and lrs[-1] == pytest.approx(0, abs=1e-15)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lr_at(steps // 2, 5, s) == pytest.approx(0.05, rel=0.2)
    assert lrs[-2] > 0  # the last step used still trains


def test_warmup_ramps_linearly_then_joins_the_schedule():
    # iteration budget: warmup counts steps
    s = settings_for(iterations=20, warmup=4, milestones=[10], gamma=0.5, lr=0.2)
    assert [lr_at(i, 3, s) for i in range(6)] == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2, 0.2])
    assert lr_at(10, 3, s) == 0.1
    c = settings_for(iterations=20, warmup=4, schedule="cosine", lr=0.2)
    assert lr_at(0, 3, c) == pytest.approx(0.05) and lr_at(3, 3, c) == lr_at(4, 3, c) == 0.2
    assert lr_at(5, 3, c) < 0.2 and lr_at(20, 3, c) == pytest.approx(0, abs=1e-15)
    # epoch budget: warmup counts epochs, ramped per step over warmup * steps_per_epoch steps
    e = settings_for(epochs=5, warmup=2, milestones=[], lr=0.2)
    assert [lr_at(i, 4, e) for i in range(9)] == pytest.approx([0.2 * (i + 1) / 8 for i in range(8)] + [0.2])


# --- budget -----------------------------------------------------------------------------------

def test_iteration_budget_runs_exactly_that_many_steps_and_logs_the_partial_epoch(tmp_path, monkeypatch):
    s = settings_for(epochs=100, iterations=7, schedule="cosine", warmup=2)  # 12 images / 4 = 3 steps an epoch
    real, lrs = torch.optim.AdamW.step, []

    def step(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    _, stats = train(tmp_path, s)
    assert lrs == [lr_at(i, 3, s) for i in range(7)]  # 7 steps, each at its own LR
    assert [row["epoch"] for row in stats["history"]] == [1, 2, 3] and stats["steps"] == 7
    assert stats["history"][-1]["lr"] == lrs[-1]
    assert (tmp_path / "run.csv").read_text().splitlines()[0] == "epoch,loss,lr,images_per_s,seconds"
    assert len((tmp_path / "run.csv").read_text().splitlines()) == 4


# --- freezing ---------------------------------------------------------------------------------

def test_frozen_weights_and_buffers_stay_bit_identical_and_get_no_optimizer_state(tmp_path):
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in Toy().state_dict().items()}
    s = settings_for(freeze=["body."], epochs=2)
    model, _ = train(tmp_path, s)
    after = model.state_dict()
    body = [k for k in before if k.startswith("body.")]
    assert any("running_mean" in k for k in body)  # the BatchNorm's buffers are among them
    assert all(torch.equal(before[k], after[k]) for k in body)
    assert not any(torch.equal(before[k], after[k]) for k in ("head.weight", "head.bias"))
    # the resume state after epoch 1 holds the optimizer: entries for the head's 2 tensors only
    opt = torch.load(tmp_path / "run.resume", weights_only=False)["optimizer"]
    assert len(opt["param_groups"][0]["params"]) == 2 and len(opt["state"]) == 2
    # control: without freezing, the same run moves the BatchNorm statistics
    free, _ = train(tmp_path, settings_for(epochs=2), tag="free")
    assert not torch.equal(before["body.1.running_mean"], free.state_dict()["body.1.running_mean"])


def test_freeze_prefix_matching_nothing_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError) as e:
        train(tmp_path, settings_for(freeze=["backbone."]))
    assert str(e.value) == ("finetune.freeze: prefix 'backbone.' matches no parameter; "
                            "parameters start with: body., head.")
    with pytest.raises(UserError, match="every parameter is frozen"):
        train(tmp_path, settings_for(freeze=["body.", "head."]))


# --- resume -----------------------------------------------------------------------------------

@pytest.mark.parametrize("over", [dict(iterations=8, schedule="cosine", warmup=2),
                                  dict(iterations=8, milestones=[4, 6], warmup=1, optimizer="sgd", lr=0.1),
                                  dict(epochs=3, schedule="cosine", freeze=["body.0."])])
def test_interrupted_run_resumes_bit_identically(tmp_path, monkeypatch, capsys, over):
    s = settings_for(**over)
    full, _ = train(tmp_path, s, tag="full")
    cls = OPTIMIZERS[s["optimizer"]]
    real = cls.step
    die_after(monkeypatch, cls, 7)  # 3 steps an epoch: killed in epoch 3, after epoch 2's checkpoint
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, s, tag="cut")
    monkeypatch.setattr(cls, "step", real)
    # log_every and checkpoint_every cannot change a result: changing them keeps the resume state
    resumed, stats = train(tmp_path, s, tag="cut", runtime={"log_every": 2, "checkpoint_every": 5, "progress": True})
    assert "resuming from" in capsys.readouterr().out
    assert same_weights(full, resumed)
    assert [row["epoch"] for row in stats["history"]] == [1, 2, 3]
    assert math.isfinite(stats["history"][-1]["loss"])
