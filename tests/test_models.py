"""Backbones, masking, heads and strict checkpoint loading."""

from __future__ import annotations

import pytest
import torch

from sslseg.io import UserError
from sslseg.models import PRESETS, build_backbone, count_parameters, encode
from sslseg.models.checkpoint import load_backbone, load_model, save_checkpoint
from sslseg.models.vit import patchify, unpatchify
from sslseg.objectives import Classify, Segment, SimMIM, random_mask

VINY = dict(preset="viny", image_size=128, patch_size=16)


def test_viny_has_the_seeds_parameter_count():
    backbone = build_backbone("viny", 128, 16)
    assert count_parameters(backbone) == 4_842_880
    # + the seeds' 128→2 linear head = the 4,843,138 they report
    assert count_parameters(backbone) + 128 * 2 + 2 == 4_843_138


@pytest.mark.parametrize("preset,dim", [("vit_tiny", 192), ("vit_small", 384), ("vit_base", 768)])
def test_presets_build_with_config_image_and_patch_size(preset, dim):
    backbone = build_backbone(preset, image_size=64, patch_size=8)
    tokens = encode(backbone, torch.randn(1, 3, 64, 64))
    assert tokens.shape == (1, 1 + 64, dim)
    assert set(PRESETS) == {"viny", "vit_tiny", "vit_small", "vit_base"}


def test_patchify_roundtrip_and_pixel_head_layout():
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(unpatchify(patchify(x, 16), 16, 3), x)
    # patch 1 (row 0, col 1) holds pixels [0:16, 16:32]
    assert torch.equal(patchify(x, 16)[:, 1].reshape(2, 16, 16, 3).permute(0, 3, 1, 2), x[:, :, :16, 16:32])


def test_random_mask_hides_exactly_the_ratio_in_every_sample():
    mask = random_mask(16, 64, 0.5, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and (mask.sum(1) == 32).all()
    assert not torch.equal(mask[0], mask[1])  # per-sample positions


def test_simmim_loss_counts_only_masked_patches():
    torch.manual_seed(0)
    model = SimMIM(dict(preset="viny", image_size=32, patch_size=16), mask_ratio=0.5)
    images = torch.randn(1, 3, 32, 32)
    mask = torch.tensor([[True, False, False, True]])
    loss, out = model({"images": images, "mask": mask})
    err = (patchify(out["pred"], 16) - patchify(images, 16)).abs()
    assert loss.item() == pytest.approx(err[0, [0, 3]].mean().item(), rel=1e-5)
    # the mask token really replaces the hidden patches: their content cannot leak
    changed = images.clone()
    changed[:, :, :16, :16] += 5  # patch 0 is masked
    torch.testing.assert_close(model({"images": changed, "mask": mask})[1]["pred"], out["pred"])


def test_segment_head_gives_per_pixel_logits():
    model = Segment(VINY, classes=3, dropout=0.1)
    logits = model.predict(torch.randn(2, 3, 128, 128))
    assert logits.shape == (2, 3, 128, 128)


def test_backbone_load_is_strict_and_reports_the_dropped_head(tmp_path):
    pre = SimMIM(dict(preset="viny", image_size=32, patch_size=16))
    save_checkpoint(tmp_path / "pre.pt", pre, {})
    seg = Segment(dict(preset="viny", image_size=32, patch_size=16))
    dropped = load_backbone(seg, tmp_path / "pre.pt")
    assert dropped == ["head.proj.bias", "head.proj.weight", "mask_token"]
    for k, v in seg.backbone.state_dict().items():
        assert torch.equal(v, pre.backbone.state_dict()[k])
    other = Segment(dict(preset="vit_tiny", image_size=32, patch_size=16))
    with pytest.raises(UserError, match="does not match model.preset"):
        load_backbone(other, tmp_path / "pre.pt")


def test_whole_model_load_rejects_a_checkpoint_of_another_task(tmp_path):
    cls = Classify(dict(preset="viny", image_size=32, patch_size=16), classes=6)
    save_checkpoint(tmp_path / "cls.pt", cls, {})
    with pytest.raises(UserError, match="does not fit this model"):
        load_model(Segment(dict(preset="viny", image_size=32, patch_size=16)), tmp_path / "cls.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt or truncated checkpoint"):
        load_model(cls, tmp_path / "bad.pt")
