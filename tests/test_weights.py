"""Backbone weights from local files (model.weights, a DDeP encoder file): torchvision's own
ResNet state dicts load into sslseg's ResNets, strictly, with nothing downloaded."""

from __future__ import annotations

import pytest
import torch
import torchvision

from sslseg.io import UserError
from sslseg.models.checkpoint import save_checkpoint
from sslseg.objectives import build_objective
from sslseg.stages.train import _init_from

MODEL = {"backbone": "resnet18", "image_size": 64, "patch_size": 16}


def _segmenter(model: dict = MODEL):
    torch.manual_seed(0)
    return build_objective("segment", {"model": model, "classes": 3, "dropout": 0.0})


def test_torchvision_resnet_weights_load_into_the_backbone(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)  # the layout of torchvision's resnet18-f37072fd.pth
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    seg = _segmenter({**MODEL, "weights": str(tmp_path / "resnet18.pth")})
    dropped = _init_from(seg, None, seg_model := {**MODEL, "weights": str(tmp_path / "resnet18.pth")})
    assert seg_model["weights"].endswith("resnet18.pth")
    assert dropped == ["fc.bias", "fc.weight"]  # the classifier, which a backbone does not have
    theirs = reference.state_dict()
    for k, v in seg.backbone.state_dict().items():
        assert torch.equal(v, theirs[k]), k
    # and the features are torchvision's: the same network up to its pooling
    reference.eval(), seg.eval()
    x = torch.randn(2, 3, 64, 64)
    trunk = torch.nn.Sequential(*list(reference.children())[:-2])
    assert torch.allclose(seg.backbone.forward_maps(x), trunk(x), atol=1e-5)


def test_nested_and_sslseg_formats_load_too(tmp_path):
    source = _segmenter()
    torch.save({"state_dict": source.backbone.state_dict()}, tmp_path / "nested.pth")
    save_checkpoint(tmp_path / "sslseg.pt", source, {"stage": "finetune"})
    for name in ("nested.pth", "sslseg.pt"):
        torch.manual_seed(5)
        target = build_objective("segment", {"model": MODEL, "classes": 3, "dropout": 0.0})
        _init_from(target, str(tmp_path / name), MODEL)
        assert all(torch.equal(a, b) for a, b in zip(target.backbone.state_dict().values(),
                                                     source.backbone.state_dict().values())), name


def test_ddep_takes_a_plain_weights_file_as_its_frozen_encoder(tmp_path):
    torch.manual_seed(2)
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "supervised.pth")
    model = {**MODEL, "decoder_channels": [16, 8, 8, 8, 8], "decoder_width": 1}
    ddep = build_objective("ddep", {"model": model, "sigma": 0.22, "gamma_range": [], "encoder": "x.pth"})
    _init_from(ddep, str(tmp_path / "supervised.pth"), model)
    assert torch.equal(ddep.backbone.conv1.weight, reference.conv1.weight)


@pytest.mark.parametrize("write,line", [
    (lambda p: None, "model.weights.resnet18: {p} is not a file (nothing is downloaded at run time)"),
    (lambda p: p.write_text("not torch"), "model.weights.resnet18: {p} is not a readable torch weights file"),
    (lambda p: torch.save(torchvision.models.resnet50(weights=None).state_dict(), p),
     "model.weights.resnet18: {p} does not fit backbone ResNetBackbone"),
])
def test_bad_weights_files_are_one_line_errors_naming_the_key(tmp_path, write, line):
    path = tmp_path / "w.pth"
    write(path)
    seg = _segmenter()
    with pytest.raises(UserError) as e:
        _init_from(seg, None, {**MODEL, "weights": str(path)})
    assert str(e.value).startswith(line.format(p=path)) and "\n" not in str(e.value)
