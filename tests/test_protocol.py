"""The protocol as the papers and their reference code run it (issue 14, item 1): SimMIM's crop on
the whole image, no labelled image dropped in an epoch, weight-decay exclusions, and the
defaults that name where each choice comes from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslseg.config import load_config, stage_settings
from sslseg.data.augment import augment, crop_params
from sslseg.data.loader import Batches
from sslseg.data.pack import pack, read_pack
from sslseg.data.sources import Record
from sslseg.grid import Run
from sslseg.objectives import build_objective
from sslseg.optim import make_optimizer, no_weight_decay
from sslseg.train import fit
from test_engine import RUNTIME, Toy, make_pack, settings_for, transform

ROOT = Path(__file__).resolve().parents[1]


def wide_image(path: Path) -> Path:
    """A 160×120 photo (4:3, as most of ImageNet): a red strip on its left tenth, grey elsewhere
    (off-centre content)."""
    a = np.full((120, 160, 3), 128, np.uint8)
    a[:, :16] = (255, 0, 0)
    Image.fromarray(a).save(path)
    return path


def red_fraction(images: np.ndarray) -> float:
    """Share of pixels that are clearly red (uint8 HWC or float CHW in [0, 1] after denormalising)."""
    r, g = images[..., 0].astype(float), images[..., 1].astype(float)
    return float(((r > 200) & (g < 60)).mean())


def test_whole_image_pack_keeps_off_centre_content_and_its_aspect(tmp_path):
    rec = [Record("a", wide_image(tmp_path / "a.jpg"))]
    whole = read_pack(pack(rec, tmp_path / "whole.h5", 48, "whole"), None, ("images", "aspect"))
    centre = read_pack(pack(rec, tmp_path / "centre.h5", 48, "centre"), None, ("images", "aspect"))
    assert whole["aspect"].tolist() == [pytest.approx(4 / 3)] and "aspect" not in centre
    assert red_fraction(whole["images"]) > 0.05  # a tenth of the width survives the squash
    assert red_fraction(centre["images"]) == 0  # the centre square never shows the strip


@pytest.mark.parametrize("original", [2.0, 4 / 3, 1.0, 0.75])
def test_crop_area_and_shape_are_drawn_relative_to_the_original(original):
    """For an original of this width / height squashed into a square, every crop has an area
    in U(scale) of the original and a pixel aspect ratio in `ratio`, as torchvision's
    RandomResizedCrop on the original draws them; or, when 10 draws do not fit (wide
    originals), its fallback: the full height (width) at the nearest allowed aspect ratio."""
    n = 4000
    theta = crop_params(n, (0.67, 1.0), (3 / 4, 4 / 3), 0.0, torch.Generator().manual_seed(0),
                        torch.full((n,), original))
    w, h = theta[:, 0, 0].abs(), theta[:, 1, 1]
    assert (w <= 1 + 1e-6).all() and (h <= 1 + 1e-6).all()
    shape = w * original / h  # pixel aspect = (w·W) / (h·H)
    assert shape.min() >= 3 / 4 - 1e-4 and shape.max() <= 4 / 3 + 1e-4
    fallback = (theta[:, 0, 2] == 0) & (theta[:, 1, 2] == 0)
    area = (w * h)[~fallback]
    assert ((area >= 0.67 - 1e-5) & (area <= 1 + 1e-5)).all()
    if original == 2.0:  # no 2:1 crop of area ≥ 0.67 has aspect ≤ 4/3: always the fallback
        assert fallback.all() and torch.allclose(w, torch.tensor(2 / 3)) and torch.allclose(h, torch.tensor(1.0))
    else:
        assert fallback.float().mean() < 0.1
    # crops move: the left edge of the original is reached (the crop's left border at -1)
    assert original == 2.0 or ((theta[:, 0, 2] - w) < -0.99).any()


def test_simmim_default_crops_move_over_the_whole_image(tmp_path):
    cfg = load_config(ROOT / "config.yaml")
    aug = cfg["pretrain"]["augment"]
    assert cfg["data"]["pretrain"]["resize"] == "whole"
    assert aug["scale"] == [0.67, 1.0] and aug["ratio"] == [0.75, 1.3333]  # microsoft/SimMIM data_simmim.py
    rec = [Record("a", wide_image(tmp_path / "a.jpg"))]
    arrays = read_pack(pack(rec, tmp_path / "p.h5", 48, "whole"), None, ("images", "aspect"))
    images = torch.from_numpy(arrays["images"]).repeat(64, 1, 1, 1)
    aspect = torch.from_numpy(arrays["aspect"]).repeat(64)
    x, _ = augment(images, None, 32, torch.Generator().manual_seed(0), aug["scale"], aug["ratio"], 0.0, 0.0, aspect)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    rgb = (x * std + mean).permute(0, 2, 3, 1).numpy() * 255
    shown = [red_fraction(im) > 0 for im in rgb]
    assert 8 < sum(shown) < 64  # crops move over the whole image: some keep the left edge, some cut it


def test_no_labelled_image_is_dropped_in_an_epoch(tmp_path):
    cfg = load_config(ROOT / "config.yaml")
    for stage in ("intermediate", "finetune", "probe"):
        assert cfg[stage]["drop_last"] is False, stage
    assert cfg["pretrain"]["drop_last"] is True  # unlabelled: microsoft/SimMIM and MAE drop it
    # 250 pets at batch 64: 64, 64, 64 and 58, every pet once
    make_pack(tmp_path / "p.h5", n=300)
    rows = np.sort(np.random.default_rng(0).choice(300, 250, replace=False))
    b = Batches(tmp_path / "p.h5", rows, 64, torch.device("cpu"), ("images",), drop_last=False)
    order = b.order(5)
    batches = list(b.epoch(5))
    assert [len(x["images"]) for x in batches] == [64, 64, 64, 58] and len(b) == 4
    assert sorted(order.tolist()) == list(range(250))
    # the loop trains on every batch: 3 epochs of 10 images at batch 4 = 9 steps
    small = Batches(make_pack(tmp_path / "small.h5", n=10), None, 4, torch.device("cpu"), ("images", "masks"),
                    drop_last=False)
    stats = fit(Toy(), small, transform, settings_for(epochs=3, milestones=[]), runtime=RUNTIME, name="finetune",
                resume_path=tmp_path / "r", log_path=tmp_path / "log.csv")
    assert stats["steps"] == 9 and len(stats["history"]) == 3


RUN = Run(backbone="viny", objective="simmim", data="random", pretrain=45000, intermediate=False,
          adaptation="finetune", labels="full", finetune=250, seed=0)


def test_stage_settings_carry_drop_last_and_wd_exclusions():
    cfg = load_config(ROOT / "config.yaml")
    assert stage_settings(cfg, "finetune", RUN)["drop_last"] is False
    assert stage_settings(cfg, "pretrain", RUN)["wd_exclusions"] is True
    assert stage_settings(cfg, "finetune", RUN)["wd_exclusions"] is False


def test_the_finetune_stage_trains_on_every_pet_every_epoch(pets_sample, tmp_path):
    """Through the real stage (settings as the workflow passes them): 10 pets at batch 4 are 3
    steps an epoch, not 2."""
    from sslseg.data.splits import write_rows
    from sslseg.io import read_json
    from sslseg.stages.data import pack_pets
    from sslseg.stages.train import finetune

    cfg = load_config(ROOT / "config.yaml", ROOT / "workflow/configs/tiny.yaml")
    pack_pets(str(pets_sample), str(tmp_path / "pets.h5"), {"image_size": 32, "download": False, "resize": "crop"})
    write_rows(tmp_path / "rows.txt", np.arange(10))
    settings = {**stage_settings(cfg, "finetune", RUN), "batch_size": 4, "epochs": 2, "iterations": 0, "milestones": []}
    finetune(str(tmp_path / "pets.h5"), str(tmp_path / "rows.txt"), str(tmp_path / "model.pt"), str(tmp_path / "log.csv"),
             settings, {"log_every": 10, "checkpoint_every": 10, "memory_gb": 1.0, "progress": False})
    side = read_json(tmp_path / "model.pt.json")
    assert side["images"] == 10 and side["steps"] == 2 * 3
    from sslseg.models.checkpoint import read_checkpoint

    assert read_checkpoint(tmp_path / "model.pt")["meta"]["input_resize"] == "crop"  # for tools scoring new images


def _simmim(wd_exclusions: bool):
    model = {"backbone": "viny", "image_size": 32, "patch_size": 16}
    objective = build_objective("simmim", {"model": model, "mask_ratio": 0.5})
    s = settings_for(optimizer="adamw", lr=1.0, weight_decay=0.5, wd_exclusions=wd_exclusions)
    return objective, make_optimizer(objective, s, torch.device("cpu"))


def test_weight_decay_exclusions_follow_simmim():
    objective, opt = _simmim(True)
    names = {id(p): n for n, p in objective.named_parameters()}
    skipped = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert {"backbone.pos_embed", "backbone.cls_token"} <= skipped
    assert "mask_token" in decayed  # microsoft/SimMIM's ViT decays it (only its Swin lists it)
    assert all(n.endswith(".bias") or "norm" in n or n in ("backbone.pos_embed", "backbone.cls_token")
               for n in skipped)
    assert any(n.endswith("qkv.weight") for n in decayed) and not any(n.endswith(".bias") for n in decayed)
    assert len(skipped) + len(decayed) == len(names)
    # behaviour: with zero gradients AdamW's step only decays, so excluded weights stay, others shrink
    before = {n: p.detach().clone() for n, p in objective.named_parameters()}
    for p in objective.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in objective.named_parameters():
        if n in skipped:
            assert torch.equal(p, before[n]), n
        else:
            assert torch.allclose(p, before[n] * 0.5), n


def test_weight_decay_on_every_parameter_when_exclusions_are_off():
    objective, opt = _simmim(False)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5]
    assert no_weight_decay("backbone.blocks.0.norm1.weight", torch.zeros(4))
    assert not no_weight_decay("backbone.blocks.0.mlp.fc1.weight", torch.zeros(4, 4))


def test_pets_are_resized_and_cropped_by_default(pets_sample, tmp_path):
    """Seed 001: 'resizing and cropping to the model's input dimensions'; squash stays an option.
    The trimap is cut exactly as its photo is."""
    cfg = load_config(ROOT / "config.yaml")
    assert cfg["data"]["pets"]["resize"] == "crop"
    from sslseg.data.sources import oxford_pets

    recs = oxford_pets(pets_sample)[:4]
    crop = read_pack(pack(recs, tmp_path / "c.h5", 64, "crop"))
    squash = read_pack(pack(recs, tmp_path / "s.h5", 64, "squash"))
    for i, rec in enumerate(recs):
        w, h = Image.open(rec.image).size
        if w != h:
            assert not np.array_equal(crop["masks"][i], squash["masks"][i])
        # centre crop: the photo resized so its shorter side is 64, the middle 64 px kept; the
        # trimap (nearest) cut by the same box, its classes 1/2/3 → 0 pet, 1 background, 2 border
        s = 64 / min(w, h)
        size = (max(64, round(w * s)), max(64, round(h * s)))
        box = ((size[0] - 64) // 2, (size[1] - 64) // 2, (size[0] - 64) // 2 + 64, (size[1] - 64) // 2 + 64)
        big = Image.open(rec.image).convert("RGB").resize(size, Image.BILINEAR)
        assert np.array_equal(crop["images"][i], np.asarray(big.crop(box)))
        trimap = Image.open(rec.trimap).resize(size, Image.NEAREST).crop(box)
        assert np.array_equal(crop["masks"][i], np.asarray(trimap).astype(np.uint8) - 1)


def test_intermediate_adds_mixup_not_a_crop():
    cfg = load_config(ROOT / "config.yaml")
    assert cfg["intermediate"]["augment"]["scale"] == [1.0, 1.0] and cfg["intermediate"]["augment"]["ratio"] == [1.0, 1.0]
    assert cfg["intermediate"]["augment"]["flip"] == cfg["finetune"]["augment"]["flip"]
    assert cfg["intermediate"]["mixup_alpha"] > 0


@pytest.mark.parametrize("stage", ["pretrain", "intermediate", "finetune", "probe"])
def test_every_protocol_choice_names_its_source(stage):
    import yaml

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    props = schema["properties"][stage]["properties"]
    for key in ("drop_last", "wd_exclusions"):
        assert "description" in props[key] and props[key]["default"] in (True, False), (stage, key)
