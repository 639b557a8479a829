"""Backbones (ViT and ResNet behind one interface), masking, heads and strict checkpoint loading."""

from __future__ import annotations

import pytest
import timm
import torch

from sslseg.io import UserError
from sslseg.models import BACKBONES, build_backbone, count_parameters
from sslseg.models.checkpoint import load_backbone, load_model, save_checkpoint
from sslseg.models.vit import patchify, unpatchify
from sslseg.objectives.classify import Classify
from sslseg.objectives.segment import Segment
from sslseg.objectives.simmim import SimMIM, random_mask

VINY = dict(backbone="viny", image_size=128, patch_size=16)
VINY32 = dict(backbone="viny", image_size=32, patch_size=16)


def test_viny_has_the_seeds_parameter_count():
    backbone = build_backbone(VINY)
    assert count_parameters(backbone) == 4_842_880
    # + the seeds' 128→2 linear head = the 4,843,138 they report
    assert count_parameters(backbone) + 128 * 2 + 2 == 4_843_138


@pytest.mark.parametrize("name,dim,r", [("viny", 128, 8), ("vit_tiny", 192, 8), ("vit_small", 384, 8),
                                        ("vit_base", 768, 8), ("resnet18", 512, 32), ("resnet50", 2048, 32)])
def test_every_backbone_gives_maps_pyramid_and_pooled(name, dim, r):
    backbone = build_backbone(dict(backbone=name, image_size=32, patch_size=8)).eval()
    images = torch.randn(2, 3, 32, 32)
    assert (backbone.num_features, backbone.reduction) == (dim, r)
    with torch.no_grad():
        assert backbone.forward_maps(images).shape == (2, dim, 32 // r, 32 // r)
        pyramid = backbone.forward_pyramid(images, 3)
        assert backbone.forward_pooled(images).shape == (2, dim)
    assert len(pyramid) == 3 and all(m.ndim == 4 and m.shape[0] == 2 for m in pyramid)
    assert pyramid[-1].shape[1:] == (dim, 32 // r, 32 // r)  # the deepest level is the final map's grid


def test_registry_lists_both_families_and_resnets_match_timm():
    assert list(BACKBONES) == ["viny", "vit_tiny", "vit_small", "vit_base", "resnet18", "resnet50"]
    ours = build_backbone(dict(backbone="resnet18", image_size=64, patch_size=16))
    timms = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="")
    assert list(ours.state_dict()) == list(timms.state_dict())
    assert count_parameters(ours) == count_parameters(timms)
    # a ResNet's pyramid: stages at strides 16 and 32
    assert [m.shape[-1] for m in ours.forward_pyramid(torch.randn(1, 3, 64, 64), 2)] == [4, 2]


def test_unknown_backbone_and_resnet_mask_are_one_line_errors():
    with pytest.raises(UserError, match=r"^grid.backbones: unknown backbone 'vit_huge'; available: viny, ") as e:
        build_backbone(dict(backbone="vit_huge", image_size=64, patch_size=16))
    assert "\n" not in str(e.value)
    resnet = build_backbone(dict(backbone="resnet18", image_size=64, patch_size=16))
    with pytest.raises(UserError, match="grid.backbones: resnet18 cannot mask patches"):
        resnet.forward_maps(torch.randn(1, 3, 64, 64), torch.zeros(1, 16, dtype=torch.bool))
    with pytest.raises(UserError, match="^grid.backbones: simmim masks patches, which resnet18 cannot") as e:
        SimMIM(dict(backbone="resnet18", image_size=64, patch_size=16), 0.5)
    assert "\n" not in str(e.value)


def test_patchify_roundtrip_and_pixel_head_layout():
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(unpatchify(patchify(x, 16), 16, 3), x)
    # patch 1 (row 0, col 1) holds pixels [0:16, 16:32]
    assert torch.equal(patchify(x, 16)[:, 1].reshape(2, 16, 16, 3).permute(0, 3, 1, 2), x[:, :, :16, 16:32])
    wide = torch.randn(1, 3, 16, 48)
    assert torch.equal(unpatchify(patchify(wide, 16), 16, 3, (1, 3)), wide)


def test_random_mask_hides_exactly_the_ratio_in_every_sample():
    mask = random_mask(torch.rand(16, 64, generator=torch.Generator().manual_seed(0)), 0.5)
    assert mask.dtype == torch.bool and (mask.sum(1) == 32).all()
    assert not torch.equal(mask[0], mask[1])  # per-sample positions


def test_simmim_loss_counts_only_masked_patches():
    torch.manual_seed(0)
    model = SimMIM(VINY32, mask_ratio=0.5)
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


def test_segment_on_resnet18_gives_pixel_logits_and_trains_a_step():
    torch.manual_seed(0)
    model = Segment(dict(backbone="resnet18", image_size=64, patch_size=16), classes=3, dropout=0.1)
    assert model.head.proj.out_features == 32 * 32 * 3  # r×r×classes per location
    batch = {"images": torch.randn(2, 3, 64, 64), "masks": torch.randint(0, 3, (2, 64, 64))}
    loss, out = model(batch)
    assert out["logits"].shape == (2, 3, 64, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.backbone.conv1.weight.detach().clone()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.backbone.conv1.weight)


def test_backbone_load_is_strict_and_reports_the_dropped_head(tmp_path):
    pre = SimMIM(VINY32, 0.5)
    save_checkpoint(tmp_path / "pre.pt", pre, {})
    seg = Segment(VINY32, 3, 0.0)
    dropped = load_backbone(seg, tmp_path / "pre.pt")
    assert dropped == ["head.proj.bias", "head.proj.weight", "mask_token"]
    for k, v in seg.backbone.state_dict().items():
        assert torch.equal(v, pre.backbone.state_dict()[k])
    other = Segment(dict(backbone="vit_tiny", image_size=32, patch_size=16), 3, 0.0)
    with pytest.raises(UserError, match="does not match grid.backbones"):
        load_backbone(other, tmp_path / "pre.pt")


def test_whole_model_load_rejects_a_checkpoint_of_another_task(tmp_path):
    cls = Classify(VINY32, classes=6, dropout=0.0, mixup_alpha=0.0)
    save_checkpoint(tmp_path / "cls.pt", cls, {})
    with pytest.raises(UserError, match="does not fit this model"):
        load_model(Segment(VINY32, 3, 0.0), tmp_path / "cls.pt")
    (tmp_path / "photo.pt").write_bytes(b"\xff\xd8\xff\xe0 a JPEG given as --ckpt")  # not the user's to delete
    with pytest.raises(UserError, match="photo.pt: not a PyTorch checkpoint; give a model.pt a training stage wrote"):
        load_model(cls, tmp_path / "photo.pt")
    with pytest.raises(UserError, match="a folder, not a checkpoint; give the model.pt inside it"):
        load_model(cls, tmp_path)
    data = (tmp_path / "cls.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])  # a torch file cut short
    with pytest.raises(UserError, match="cut.pt: corrupt or truncated checkpoint .* delete it and rerun that stage"):
        load_model(cls, tmp_path / "cut.pt")
