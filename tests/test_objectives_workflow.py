"""The all-objectives grid through the real workflow, on the tiny generated set: SimMIM, MAE,
DeP and DDeP (on SimMIM's frozen encoder) pretrained on a mixed-domain subset, UNet fine-tunes
at two decoder widths from each, label budgets as a count and a fraction, the 70/15/15 split
with per-epoch validation, and study D's recipe. Every wire between the stages is checked on
the artifacts the run leaves."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml

from conftest import TINY, copy_workflow, snakemake
from sslseg.config import merge

pytestmark = pytest.mark.slow

OVERRIDES = """
grid:
  objectives: [simmim, mae, dep, ddep]
  pretrain_data: [mixed]
  pretrain_sizes: [0, 12]
  intermediate: [false]
  finetune_sizes: ["50%", 4]
  seeds: [0]
  decoder_widths: [1, 2]
data:
  pets: {split: train_val_test}
  pretrain: {domain_classes: animals.txt}
model: {decoder_channels: [8, 8, 8, 8, 8]}
objectives:
  mae: {decoder: small, pretrain: {epochs: 1, milestones: []}}
  dep: {pretrain: {epochs: 1, optimizer: adam, schedule: cosine, lr: 1.0e-3}}
  ddep: {encoder: simmim, pretrain: {epochs: 1, optimizer: adam, schedule: cosine, lr: 1.0e-3}}
finetune: {head: unet, recipe: adam_cosine, epochs: 2, milestones: []}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    wf = copy_workflow(tmp_path_factory.mktemp("objectives"))
    # the demo's pretraining classes are n01000000..n01000009: call half of them the domain
    (wf / "animals.txt").write_text("# the tiny set's in-domain classes\n" +
                                    "".join(f"n{1000000 + i:08d}\n" for i in range(5)))
    # one --configfile: the tiny config with these overrides (a second flag would replace the first)
    tiny = yaml.safe_load((wf / TINY[1]).read_text())
    (wf / "objectives.yaml").write_text(yaml.safe_dump(merge(tiny, yaml.safe_load(OVERRIDES))))
    snakemake(wf, "--cores", "2", "--configfile", "objectives.yaml")
    return wf / "results" / "tiny"


def _backbone(path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    return {k: v for k, v in state.items() if k.startswith("backbone.")}


def test_every_objective_and_width_is_a_run_with_its_coordinates(run):
    runs = pd.read_csv(run / "report" / "runs.csv")
    # scratch + simmim + mae (no decoder of their own: one pretraining each) and dep, ddep (one
    # per width), every init fine-tuned with a UNet of both widths, at 2 budgets
    assert len(runs) == 5 * 2 * 2
    assert set(runs.objective) == {"none", "simmim", "mae", "dep", "ddep"} and set(runs.decoder) == {1, 2}
    # 24 pets: 4 val, 4 test, a pool of 16, so 50 % is 8 labelled images
    assert set(zip(runs.finetune.astype(str), runs.labelled_images)) == {("50%", 8), ("4", 4)}
    assert sorted(p.parent.name for p in (run / "pretrain" / "viny").glob("*/model.pt")) == [
        "ddep-mixed-12", "ddep-mixed-12-w2", "dep-mixed-12", "dep-mixed-12-w2", "mae-mixed-12", "simmim-mixed-12"]


def test_ddep_trains_on_simmims_frozen_encoder(run):
    pre = run / "pretrain" / "viny"
    simmim, ddep = _backbone(pre / "simmim-mixed-12" / "model.pt"), _backbone(pre / "ddep-mixed-12-w2" / "model.pt")
    assert simmim.keys() == ddep.keys() and all(torch.equal(simmim[k], ddep[k]) for k in simmim)
    meta = json.loads((pre / "ddep-mixed-12" / "model.pt.json").read_text())
    assert meta["init"].endswith("pretrain/viny/simmim-mixed-12/model.pt")
    assert meta["settings"]["freeze"] == ["backbone."] and meta["settings"]["optimizer"] == "adam"


def test_a_dep_decoder_carries_into_the_unet_fine_tune(run):
    ft = json.loads((run / "runs" / "viny" / "dep-mixed-12-w2-i0" / "finetune-full-n50pct-s0-w2" /
                     "model.pt.json").read_text())
    assert ft["init"].endswith("pretrain/viny/dep-mixed-12-w2/model.pt")
    assert ft["dropped_keys"] == ["decoder.output.bias", "decoder.output.weight"]
    assert ft["settings"]["model"]["decoder_width"] == 2 and ft["settings"]["schedule"] == "cosine"


def test_validation_curves_and_the_mixed_pack(run):
    log = pd.read_csv(run / "runs" / "viny" / "scratch-i0" / "finetune-full-n4-s0" / "log.csv")
    assert len(log) == 2 and log.val_miou.between(0, 1).all()
    assert len((run / "splits" / "val.txt").read_text().split()) == 4
    pack = json.loads((run / "data" / "pretrain-mixed.h5.json").read_text())
    assert pack["domains"]["in_domain_images"] == pack["domains"]["out_domain_images"] == 6
