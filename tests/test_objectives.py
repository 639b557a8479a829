"""Objectives by name: one file each, listed without torch, built from complete settings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslseg.io import UserError
from sslseg.objectives import available, build_objective, pretraining

ROOT = Path(__file__).resolve().parents[1]
VINY32 = dict(backbone="viny", image_size=32, patch_size=16)

TOY = '''"""A toy objective dropped in as one file."""
import torch
import torch.nn as nn

PRETRAINING = True


def build(settings: dict) -> nn.Module:
    return Toy(settings["width"])


class Toy(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.proj = nn.Linear(width, 1)

    def forward(self, batch: dict, gen=None):
        out = self.proj(batch["x"])
        return out.square().mean(), {"out": out}
'''


def _python(code: str, path: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(path))
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_objectives_are_listed_without_importing_torch():
    out = _python("import sys, sslseg.objectives as o\n"
                  "print(o.available(), o.pretraining())\n"
                  "assert 'torch' not in sys.modules, 'listing objectives imported torch'", ROOT)
    every = "['classify', 'ddep', 'dep', 'mae', 'segment', 'simmim'] ['ddep', 'dep', 'mae', 'simmim']"
    assert out.strip() == every
    assert available() == ["classify", "ddep", "dep", "mae", "segment", "simmim"]
    assert pretraining() == ["ddep", "dep", "mae", "simmim"]


def test_unknown_objective_is_a_one_line_error():
    with pytest.raises(UserError) as e:
        build_objective("byol", {})
    assert str(e.value) == ("grid.objectives: unknown objective 'byol'; available: "
                            "classify, ddep, dep, mae, segment, simmim")


def test_a_new_objective_is_one_file(tmp_path):
    shutil.copytree(ROOT / "sslseg", tmp_path / "sslseg", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "sslseg" / "objectives" / "toy.py").write_text(TOY)
    out = _python("import torch, sslseg.objectives as o\n"
                  "assert o.__file__.startswith(%r), o.__file__\n"
                  "model = o.build_objective('toy', {'width': 4})\n"
                  "loss, out = model({'x': torch.ones(2, 4)}, None)\n"
                  "print(o.available(), o.pretraining(), type(model).__name__, tuple(out['out'].shape))" % str(tmp_path),
                  tmp_path)
    assert out.strip() == ("['classify', 'ddep', 'dep', 'mae', 'segment', 'simmim', 'toy'] "
                           "['ddep', 'dep', 'mae', 'simmim', 'toy'] Toy (2, 1)")


def test_build_objective_reads_the_complete_settings():
    torch.manual_seed(0)
    seg = build_objective("segment", dict(model=VINY32, classes=3, dropout=0.1))
    assert seg.head.drop.p == 0.1 and seg.head.proj.out_features == 16 * 16 * 3
    cls = build_objective("classify", dict(model=VINY32, classes=6, dropout=0.0, mixup_alpha=0.2))
    assert cls.mixup_alpha == 0.2 and cls.predict(torch.randn(2, 3, 32, 32)).shape == (2, 6)
    sim = build_objective("simmim", dict(model=VINY32, mask_ratio=0.75))
    loss, out = sim({"images": torch.randn(2, 3, 32, 32)}, torch.Generator().manual_seed(0))
    assert (out["mask"].sum(1) == 3).all() and out["pred"].shape == (2, 3, 32, 32)
    with pytest.raises(KeyError, match="dropout"):  # no silent second set of defaults
        build_objective("segment", dict(model=VINY32, classes=3))
