"""Study B's pieces: masked cross-entropy (seed 002 eq. 1), the linear probe head, a frozen probe
that leaves its backbone bit-identical, training on generated imperfect labels, and the checks."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from conftest import ROOT, TINY
from sslseg.objectives.segment import IGNORE, masked_cross_entropy


def test_masked_cross_entropy_on_hand_computed_cases():
    logits = torch.zeros(1, 3, 1, 2, requires_grad=True)  # uniform: each labelled pixel costs ln 3
    half = torch.tensor([[[0, IGNORE]]])
    assert masked_cross_entropy(logits, half, "pixels").item() == pytest.approx(math.log(3) / 2)  # / (H*W)
    assert masked_cross_entropy(logits, half, "labelled").item() == pytest.approx(math.log(3))  # / labelled
    full = torch.tensor([[[0, 2]]])
    assert masked_cross_entropy(logits, full, "pixels").item() == pytest.approx(math.log(3))
    skewed = torch.tensor([[[[2.0], [0.0]], [[0.0], [0.0]], [[0.0], [1.0]]]]).permute(0, 1, 3, 2)  # (1, 3, 1, 2)
    expected = -math.log(math.exp(2) / (math.exp(2) + 2))  # pixel 0, class 0; pixel 1 unlabelled
    assert masked_cross_entropy(skewed, half, "pixels").item() == pytest.approx(expected / 2)
    for norm in ("pixels", "labelled"):  # nothing labelled: zero loss, zero (finite) gradient
        none = torch.full((1, 1, 2), IGNORE)
        loss = masked_cross_entropy(logits, none, norm)
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(logits.grad).all() and not logits.grad.any()
        logits.grad = None


def test_for_full_labels_the_paper_normalisation_equals_the_mean():
    """Study A's numbers stay what they were: sum / (H*W) is the plain mean when every pixel is labelled."""
    torch.manual_seed(0)
    logits, target = torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4, 16, 16))
    assert masked_cross_entropy(logits, target, "pixels").item() == \
        torch.nn.functional.cross_entropy(logits, target).item()


def test_linear_head_gives_pixel_logits_from_patch_tokens():
    from sslseg.objectives import build_objective

    model = build_objective("segment", {"model": {"backbone": "viny", "image_size": 32, "patch_size": 16},
                                        "classes": 3, "dropout": 0.0, "head": "linear"})
    logits = model.predict(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 3, 32, 32)
    assert sum(p.numel() for p in model.head.parameters()) == model.backbone.num_features * 3 + 3  # one linear layer


def _config(tmp_path, extra: dict):
    from sslseg.config import load_config, merge, validate

    return validate(merge(load_config(ROOT / "config.yaml", ROOT / TINY[1]), extra))


@pytest.fixture
def tiny_pets(tmp_path, pets_sample):
    from sslseg.stages.data import pack_pets

    pack_pets(str(pets_sample.parent), str(tmp_path / "pets.h5"), {"image_size": 32, "download": False, "resize": "crop"})
    np.savetxt(tmp_path / "rows.txt", np.arange(8), fmt="%d")
    return tmp_path


def _probe(tmp_path, cfg, labels: str | None = None, tag: str = "probe") -> dict:
    from sslseg.grid import runs
    from sslseg.config import stage_settings
    from sslseg.stages.train import probe

    run = next(r for r in runs(cfg) if r.adaptation == "probe")
    settings = stage_settings(cfg, "probe", run)
    probe(str(tmp_path / "pets.h5"), str(tmp_path / "rows.txt"), str(tmp_path / f"{tag}.pt"),
          str(tmp_path / f"{tag}.csv"), settings, {"log_every": 1, "checkpoint_every": 1, "memory_gb": 1,
                                                    "progress": False},
          init=str(tmp_path / "init.pt"), labels=labels)
    return torch.load(tmp_path / f"{tag}.pt", weights_only=True)


def test_a_probe_leaves_its_backbone_bit_identical_and_trains_only_the_head(tmp_path, tiny_pets, monkeypatch):
    from sslseg.models.checkpoint import save_checkpoint
    from sslseg.objectives import build_objective

    from sslseg.objectives.segment import Segment

    cfg = _config(tmp_path, {"grid": {"adaptations": ["probe"], "pretrain_sizes": [16]},
                             "probe": {"iterations": 3, "batch_size": 4, "dropout": 0.5}})
    modes = []  # the frozen backbone runs in eval mode (no dropout on its features), the head trains
    predict = Segment.predict
    monkeypatch.setattr(Segment, "predict", lambda self, x: modes.append((self.backbone.training,
                                                                          self.head.training)) or predict(self, x))
    torch.manual_seed(1)
    init = build_objective("simmim", {"model": {"backbone": "viny", "image_size": 32, "patch_size": 16},
                                      "mask_ratio": 0.5})
    save_checkpoint(tmp_path / "init.pt", init, {"stage": "pretrain", "settings": {}})
    out = _probe(tmp_path, cfg)
    assert modes == [(False, True)] * 3
    backbone = {k[len("backbone."):]: v for k, v in out["model"].items() if k.startswith("backbone.")}
    assert backbone and all(torch.equal(v, init.backbone.state_dict()[k]) for k, v in backbone.items())
    meta = out["meta"]["settings"]
    assert meta["stage"] == "probe" and meta["freeze"] == ["backbone."] and meta["optimizer"] == "sgd"
    assert meta["head"] == "linear" and set(k for k in out["model"] if not k.startswith("backbone.")) == \
        {"head.proj.weight", "head.proj.bias"}
    log = (tmp_path / "probe.csv").read_text().splitlines()
    assert len(log) == 3 and math.isfinite(float(log[-1].split(",")[1]))  # 3 steps of 2 an epoch: 2 epoch rows


def test_a_probe_trains_on_a_generated_label_pack_in_place_of_the_trimaps(tmp_path, tiny_pets):
    """Labels come from the pack given, not the trimaps: with every pixel unlabelled there the loss
    is exactly 0 (and finite), and the head ends elsewhere than when trained on the trimaps."""
    from sslseg.models.checkpoint import save_checkpoint
    from sslseg.objectives import build_objective

    cfg = _config(tmp_path, {"grid": {"adaptations": ["probe"], "pretrain_sizes": [16]},
                             "probe": {"iterations": 2, "batch_size": 4, "dropout": 0.0}})
    init = build_objective("simmim", {"model": {"backbone": "viny", "image_size": 32, "patch_size": 16},
                                      "mask_ratio": 0.5})
    save_checkpoint(tmp_path / "init.pt", init, {"stage": "pretrain", "settings": {}})
    with h5py.File(tiny_pets / "pets.h5", "r") as f:
        masks = f["masks"][:]
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["masks"] = np.full_like(masks, IGNORE)
    out = _probe(tmp_path, cfg, str(tmp_path / "empty.h5"), "empty")
    loss = float((tmp_path / "empty.csv").read_text().splitlines()[1].split(",")[1])
    assert loss == 0.0
    torch.manual_seed(0)  # the head's initialisation is seeded by the stage: same start both times
    trimaps = _probe(tmp_path, cfg, None, "trimaps")
    assert not torch.equal(out["model"]["head.proj.weight"], trimaps["model"]["head.proj.weight"])


BACKBONE_WITHOUT_MAPS = '''"""A toy family whose maps are a pooled embedding (not per-location features)."""
accepts_mask = False
dense_features = False
PRESETS = {"pooled_toy": {}}
'''


def test_a_probe_on_a_backbone_without_dense_features_is_one_line(tmp_path):
    import shutil

    shutil.copytree(ROOT / "sslseg", tmp_path / "sslseg", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "workflow", tmp_path / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "sslseg" / "models" / "pooled.py").write_text(BACKBONE_WITHOUT_MAPS)
    (tmp_path / "bad.yaml").write_text("grid: {backbones: [pooled_toy], adaptations: [finetune, probe]}\n")
    code = ("from sslseg.config import load_config\nfrom sslseg.io import UserError\n"
            f"try:\n    load_config({str(ROOT / 'config.yaml')!r}, 'bad.yaml')\n"
            "except UserError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == ("bad.yaml: grid.adaptations: a probe needs per-location features, which backbone "
                                  "'pooled_toy' does not give (dense_features = False); drop probe or that backbone")
