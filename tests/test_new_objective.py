"""A new self-supervised objective is one new file: it runs through the whole workflow by a config change."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from conftest import copy_workflow, snakemake

pytestmark = pytest.mark.slow

# Denoising, the simplest dense objective: reconstruct the image from a noisy copy. It uses only
# the public model API (a backbone by name, its NCHW maps, a pixel head).
TOY = '''"""Toy objective for the test: denoise images with Gaussian noise of std `noise`."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslseg.models import PixelHead, build_backbone

PRETRAINING = True


class Toy(nn.Module):
    def __init__(self, settings: dict):
        super().__init__()
        self.backbone = build_backbone(settings["model"])
        self.head = PixelHead(self.backbone.num_features, self.backbone.reduction, 3)
        self.noise = settings["noise"]

    def forward(self, batch: dict, gen: torch.Generator | None = None):
        x = batch["images"]
        pred = self.head(self.backbone.forward_maps(x + self.noise * torch.randn_like(x)))
        cells = (x.shape[-1] // self.backbone.reduction) ** 2
        return F.l1_loss(pred, x), {"pred": pred, "mask": torch.ones(x.shape[0], cells, dtype=torch.bool)}


def build(settings: dict) -> Toy:
    return Toy(settings)
'''


def test_a_new_objective_file_runs_through_the_workflow_by_config_alone(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    (wf / "sslseg" / "objectives" / "toy.py").write_text(TOY)
    cfg = yaml.safe_load((wf / "workflow/configs/tiny.yaml").read_text())
    cfg["name"] = "toy"
    cfg["grid"] = {"backbones": ["viny"], "objectives": ["toy"], "pretrain_sizes": [0, 16], "intermediate": [False],
                   "finetune_sizes": [4], "seeds": [0], "adaptations": ["finetune"], "labels": ["full"]}
    cfg["objectives"] = {"toy": {"noise": 0.5}}
    (wf / "toy.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(wf, "--cores", "2", "--configfile", "toy.yaml")

    out = wf / "results" / "toy"
    pre = json.loads((out / "pretrain/viny/toy-random-16/model.pt.json").read_text())
    assert pre["settings"]["objective"] == "toy" and pre["settings"]["noise"] == 0.5
    ft = json.loads((out / "runs/viny/toy-random-16-i0/finetune-full-n4-s0/model.pt.json").read_text())
    assert ft["init"].endswith("pretrain/viny/toy-random-16/model.pt")
    assert ft["dropped_keys"] == ["head.proj.bias", "head.proj.weight"]  # its backbone was loaded
    runs = pd.read_csv(out / "report" / "runs.csv")
    assert sorted(runs.objective) == ["none", "toy"] and runs.miou.between(0, 1).all()
    assert (out / "report" / "reconstructions_toy.png").stat().st_size > 1000  # one per pretraining objective
