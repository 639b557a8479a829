"""Seed 004's denoising pretraining: the UNet decoder, DeP (eq. 5/6), DDeP's frozen encoder, and
the pretrained decoder carried into a unet-head fine-tune. Tiny models: 32/64 px, narrow decoders."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslseg.io import UserError
from sslseg.models import PixelHead, build_backbone
from sslseg.models.checkpoint import load_backbone, load_init, read_checkpoint, save_checkpoint
from sslseg.models.heads import LinearHead
from sslseg.models.unet import DecoderBlock, UNetDecoder, build_decoder
from sslseg.objectives import _constant, build_objective, pretraining
from sslseg.objectives.ddep import DDeP
from sslseg.objectives.dep import DeP
from sslseg.objectives.segment import Segment

TINY = [16, 16, 8, 8, 8]  # narrow decoder widths: the layout of seed 004's, not its size
VINY = {"backbone": "viny", "image_size": 32, "patch_size": 16, "decoder_channels": TINY}
R18 = {"backbone": "resnet18", "image_size": 32, "patch_size": 16, "decoder_channels": TINY}
GAMMA = 1 / (1 + 0.22**2)  # eq. 5 at seed 004's best σ
OBJECTIVES = Path(__file__).resolve().parents[1] / "sslseg" / "objectives"


def decoder_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.decoder.state_dict().items()}


# --- the UNet decoder --------------------------------------------------------------------------

@pytest.mark.parametrize("backbone,size", [("viny", (32, 32)), ("vit_tiny", (32, 32)), ("resnet18", (64, 96)),
                                           ("resnet50", (32, 32))])
def test_unet_gives_full_resolution_outputs_on_every_family(backbone, size):
    """(B, K, H, W) exactly, from a batch of one in train mode (GroupNorm: no batch statistics)."""
    model = {**VINY, "backbone": backbone}
    net = build_backbone(model).eval()
    decoder = build_decoder(net, model, 5).train()
    with torch.no_grad():
        out = decoder.decode(net, torch.randn(1, 3, *size))
    assert out.shape == (1, 5, *size)
    n_blocks = int(math.log2(net.reduction))
    assert len(decoder.blocks) == n_blocks  # one block per ×2 upsampling: 4 for a ViT/16, 5 for a ResNet
    if backbone.startswith("resnet"):  # the stage outputs at strides 16, 8, 4, 2 are the skips
        assert decoder.levels == 5 and decoder.skip_index == [3, 2, 1, 0, None]
        chs = [f["num_chs"] for f in net.feature_info]  # the coarsest map, then each block's output + its skip
        assert [b.conv1[0].in_channels for b in decoder.blocks] == \
            [chs[4] + chs[3], TINY[0] + chs[2], TINY[1] + chs[1], TINY[2] + chs[0], TINY[3]]
    else:  # the last 4 blocks: 3 UNETR necks of 1, 2, 3 transposed convs (strides 8, 4, 2), a bottleneck conv
        assert decoder.levels == 4 and len(decoder.necks) == 3
        assert [sum(isinstance(m, torch.nn.ConvTranspose2d) for m in n) for n in decoder.necks] == [1, 2, 3]
        assert decoder.bottleneck[0].out_channels == 16  # TransUNet's conv_more: the entry before the blocks


def test_unet_trains_every_parameter_and_widths_multiply():
    net = build_backbone(VINY)
    decoder = UNetDecoder(net, 3, [c * 2 for c in TINY])
    decoder(net.forward_pyramid(torch.randn(2, 3, 32, 32), decoder.levels)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters())  # no unused neck
    wide = build_decoder(net, {**VINY, "decoder_width": 3}, 3)
    assert [b.conv2[0].out_channels for b in wide.blocks] == [3 * c for c in TINY[1:]]
    assert wide.output.in_channels == 24 and isinstance(wide.blocks[0], DecoderBlock)


def test_unet_settings_errors_are_one_line_user_errors():
    net = build_backbone(R18)
    with pytest.raises(UserError, match=r"^model\.decoder_channels: 4 widths for 5") as e:
        build_decoder(net, {**R18, "decoder_channels": [8, 8, 8, 8]}, 3)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"^grid\.decoder_widths: 4 is not one of 1, 2, 3"):
        build_decoder(net, {**R18, "decoder_width": 4}, 3)


# --- DeP: eq. 5 and 6 ------------------------------------------------------------------------

def test_dep_noises_by_eq5_and_its_loss_is_the_mse_of_the_noise():
    torch.manual_seed(0)
    dep = build_objective("dep", {"model": VINY, "sigma": 0.22, "gamma_range": []})
    x = torch.randn(3, 3, 32, 32)
    loss, out = dep({"images": x}, torch.Generator().manual_seed(7))
    known = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))  # fixed γ: ε is the first draw
    assert torch.equal(out["noise"], known)
    torch.testing.assert_close(out["gamma"], torch.full((3,), GAMMA), rtol=1e-7, atol=0)
    torch.testing.assert_close(out["noisy"], math.sqrt(GAMMA) * x + math.sqrt(1 - GAMMA) * known,
                               rtol=1e-6, atol=1e-6)
    assert torch.equal(loss, F.mse_loss(out["pred"], out["noise"]))
    assert out["pred"].shape == x.shape
    torch.testing.assert_close(out["denoised"], (out["noisy"] - math.sqrt(1 - GAMMA) * out["pred"]) / math.sqrt(GAMMA))
    # the estimate is exact when the prediction is: x̃ − √(1−γ)·ε = √γ·x
    torch.testing.assert_close((out["noisy"] - math.sqrt(1 - GAMMA) * known) / math.sqrt(GAMMA), x, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert dep.backbone.patch_embed.proj.weight.grad is not None  # DeP trains the encoder too


def test_dep_draws_gamma_per_image_within_its_range():
    dep = DeP(VINY, 0.22, [0.5, 0.9])
    x = torch.randn(8, 3, 32, 32)
    _, out = dep({"images": x}, torch.Generator().manual_seed(1))
    g = out["gamma"]
    assert g.shape == (8,) and bool(((g >= 0.5) & (g <= 0.9)).all()) and len(set(g.tolist())) == 8
    torch.testing.assert_close((out["noisy"] - (1 - g).sqrt().view(-1, 1, 1, 1) * out["noise"])
                               / g.sqrt().view(-1, 1, 1, 1), x, rtol=1e-5, atol=1e-5)
    _, again = dep({"images": x}, torch.Generator().manual_seed(1))
    assert torch.equal(again["noisy"], out["noisy"])  # reproducible from the loop's generator
    with pytest.raises(UserError, match=r"^objectives\.ddep\.gamma_range"):
        DDeP(VINY, 0.22, [0.9])


def test_objective_constants_are_readable_without_import():
    for name in ("dep", "ddep"):
        path = OBJECTIVES / f"{name}.py"
        assert _constant(path, "PRETRAINING") is True and _constant(path, "NEEDS_MASK") is False
        assert _constant(path, "DECODER") is True
    assert _constant(OBJECTIVES / "ddep.py", "FREEZE") == ["backbone."]
    assert _constant(OBJECTIVES / "dep.py", "FREEZE") is None
    assert {"dep", "ddep"} <= set(pretraining())


# --- DDeP: the frozen encoder, through the real pretrain stage ---------------------------------

def stage_settings(objective: str, model: dict, freeze: list[str]) -> dict:
    return dict(stage="pretrain", objective=objective, model=model, device="cpu", sigma=0.22, gamma_range=[],
                encoder="simmim", epochs=0, iterations=3, batch_size=4, optimizer="adam", momentum=0.9, lr=1e-2,
                weight_decay=0.0, schedule="cosine", milestones=[], gamma=0.1, warmup=0, freeze=freeze, seed=3,
                compile=False, amp="none", wd_exclusions=False, drop_last=True,
                augment={"scale": [1.0, 1.0], "ratio": [1.0, 1.0], "flip": 0.5, "jitter": 0.0})


RUNTIME = {"log_every": 1, "checkpoint_every": 10, "memory_gb": 1.0, "progress": False}


def make_pack(path: Path, n: int = 8, size: int = 32) -> str:
    with h5py.File(path, "w") as f:
        f["images"] = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return str(path)


@pytest.mark.parametrize("freeze", [[], ["backbone."]])
def test_ddep_stage_keeps_its_init_encoder_bit_identical_and_trains_the_decoder(tmp_path, freeze):
    """On a ResNet (BatchNorm buffers too), whether or not the stage's freeze list has FREEZE."""
    from sslseg.stages.train import pretrain

    torch.manual_seed(0)
    encoder = DeP(R18)  # an encoder source that has a decoder of its own: DDeP must not take it
    with torch.no_grad():  # give the BatchNorm statistics values a moving mean would change
        for name, buf in encoder.backbone.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()
    save_checkpoint(tmp_path / "init.pt", encoder, {})
    settings = stage_settings("ddep", R18, freeze)
    pretrain(make_pack(tmp_path / "pack.h5"), 8, str(tmp_path / "ddep.pt"), str(tmp_path / "log.csv"), settings,
             RUNTIME, init=str(tmp_path / "init.pt"))
    out = read_checkpoint(tmp_path / "ddep.pt")["model"]
    init = encoder.state_dict()
    backbone = [k for k in out if k.startswith("backbone.")]
    assert backbone and all(torch.equal(out[k], init[k]) for k in backbone)
    torch.manual_seed(settings["seed"])  # the stage's decoder before training: seeded, not the init's
    fresh = build_objective("ddep", settings)
    changed = [k for k, v in fresh.decoder.state_dict().items() if not torch.equal(out["decoder." + k], v)]
    assert len(changed) == len(fresh.decoder.state_dict())
    assert not torch.equal(out["decoder.output.weight"], init["decoder.output.weight"])


def test_ddep_loads_only_the_encoder_and_keeps_it_frozen_in_eval(tmp_path):
    from sslseg.stages.train import _init_from

    save_checkpoint(tmp_path / "dep.pt", DeP(VINY), {})
    torch.manual_seed(4)
    ddep = DDeP(VINY)
    torch.manual_seed(4)
    same = decoder_state(DDeP(VINY))
    dropped = _init_from(ddep, str(tmp_path / "dep.pt"), {})
    assert all(torch.equal(v, same[k]) for k, v in ddep.decoder.state_dict().items())  # random init, as seed 004
    assert "decoder.blocks.0.conv1.0.weight" in dropped
    ddep.train()
    assert not ddep.backbone.training and ddep.decoder.training
    assert not any(p.requires_grad for p in ddep.backbone.parameters())
    assert all(p.requires_grad for p in ddep.decoder.parameters())


def test_ddep_without_an_init_is_a_one_line_user_error(tmp_path):
    from sslseg.cli import command_parser, resolve
    from sslseg.stages.train import pretrain

    with pytest.raises(UserError, match=r"^objectives\.ddep\.encoder: ") as e:
        pretrain(make_pack(tmp_path / "pack.h5"), 8, str(tmp_path / "m.pt"), str(tmp_path / "log.csv"),
                 stage_settings("ddep", VINY, []), RUNTIME)
    assert "\n" not in str(e.value) and not (tmp_path / "m.pt").exists()
    assert command_parser("pretrain", resolve("pretrain")).parse_args(
        ["--pack", "p", "--size", "1", "--out", "o", "--log", "l", "--settings", "{}", "--init", "i.pt"]).init == "i.pt"


# --- the unet segmentation head: the pretrained decoder carries into the fine-tune -------------

def test_unet_finetune_starts_from_the_dep_decoder_except_its_output_conv(tmp_path):
    torch.manual_seed(0)
    dep = DeP(VINY)
    save_checkpoint(tmp_path / "dep.pt", dep, {})
    seg = build_objective("segment", {"model": VINY, "classes": 3, "dropout": 0.0, "head": "unet"})
    output = {k: v.clone() for k, v in seg.decoder.output.state_dict().items()}
    dropped = load_init(seg, tmp_path / "dep.pt")
    assert dropped == ["decoder.output.bias", "decoder.output.weight"]
    theirs = dep.decoder.state_dict()
    for k, v in seg.decoder.state_dict().items():
        if k.startswith("output."):  # task-specific: fresh, even though 3 classes = 3 noise channels
            assert torch.equal(v, output[k.removeprefix("output.")]) and not torch.equal(v, theirs[k])
        else:
            assert torch.equal(v, theirs[k]), k
    assert all(torch.equal(v, dep.backbone.state_dict()[k]) for k, v in seg.backbone.state_dict().items())
    assert seg.predict(torch.randn(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    # the stage's init path loads the decoder too
    from sslseg.stages.train import _init_from

    fresh = Segment(VINY, 2, 0.0, "unet")
    assert _init_from(fresh, str(tmp_path / "dep.pt"), {}) == dropped
    assert torch.equal(fresh.decoder.blocks[0].conv1[0].weight, theirs["blocks.0.conv1.0.weight"])


def test_decoder_width_mismatch_and_headless_targets(tmp_path):
    save_checkpoint(tmp_path / "dep2.pt", DeP({**VINY, "decoder_width": 2}), {})
    with pytest.raises(UserError, match=r"grid\.decoder_widths$") as e:
        load_init(Segment(VINY, 3, 0.0, "unet"), tmp_path / "dep2.pt")
    assert "\n" not in str(e.value)
    pixel = Segment(VINY, 3, 0.0, "pixel")  # no decoder: its weights are reported as not loaded
    dropped = load_init(pixel, tmp_path / "dep2.pt")
    assert "decoder.blocks.0.conv1.0.weight" in dropped and "decoder.output.weight" in dropped
    assert dropped == load_backbone(Segment(VINY, 3, 0.0, "pixel"), tmp_path / "dep2.pt")


@pytest.mark.parametrize("head,cls", [("pixel", PixelHead), ("linear", LinearHead)])
def test_map_heads_are_built_and_run_as_before(head, cls):
    """The same modules from the same RNG draws, the same logits: adding unet changed nothing."""
    model = {"backbone": "viny", "image_size": 32, "patch_size": 16}
    torch.manual_seed(0)
    backbone = build_backbone(model, 0.1)
    ref = cls(backbone.num_features, backbone.reduction, 3, 0.1)
    torch.manual_seed(0)
    seg = Segment(model, 3, 0.1, head)
    assert not hasattr(seg, "decoder") and set(seg.state_dict()) == \
        {f"backbone.{k}" for k in backbone.state_dict()} | {f"head.{k}" for k in ref.state_dict()}
    assert all(torch.equal(v, ref.state_dict()[k.removeprefix("head.")]) for k, v in seg.state_dict().items()
               if k.startswith("head."))
    x = torch.randn(2, 3, 32, 32)
    seg.eval(), backbone.eval(), ref.eval()
    assert torch.equal(seg.predict(x), ref(backbone.forward_maps(x)))
