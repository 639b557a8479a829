"""`predict_masks`: a checkpoint's masks as PNGs that anyone can score with their own tools, and
scoring them against the trimaps gives what `evaluate_folder` reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslseg.cli import main
from sslseg.config import load_config
from sslseg.data.pack import load_arrays
from sslseg.data.sources import oxford_pets
from sslseg.io import UserError
from sslseg.stages.folder import evaluate_folder, folder_records, predict_masks

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"config": str(ROOT / "config.yaml"), "configfile": str(ROOT / "workflow/configs/tiny.yaml")}
SIZE = 32


@pytest.fixture
def segmenter(tmp_path: Path) -> str:
    """An untrained ViNy segmenter at 32 px saved as a fine-tune: its random head predicts all three
    classes in about equal parts, so a mask with its classes swapped scores differently."""
    from sslseg.models.checkpoint import save_checkpoint
    from sslseg.objectives import build_objective

    torch.manual_seed(0)
    model = {"backbone": "viny", "image_size": SIZE, "patch_size": 16}
    seg = build_objective("segment", {"model": model, "classes": 3, "dropout": 0.0, "head": "pixel"})
    save_checkpoint(tmp_path / "model.pt", seg, {"stage": "finetune", "settings": {"model": model, "head": "pixel"}})
    return str(tmp_path / "model.pt")


def numpy_scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Pixel accuracy and mIoU from one confusion matrix over all pixels (a class absent from truth
    and prediction left out of the mean), written without sslseg."""
    conf = np.bincount(truth.ravel().astype(np.int64) * 3 + pred.ravel(), minlength=9).reshape(3, 3)
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    return tp.sum() / conf.sum(), float(np.mean(tp[union > 0] / union[union > 0]))


def test_masks_scored_against_the_trimaps_give_evaluate_folders_metrics(tmp_path, segmenter, pets_sample):
    out = tmp_path / "masks"
    main(["predict_masks", "--ckpt", segmenter, "--root", str(pets_sample), "--out", str(out),
          "--config", CONFIG["config"], "--configfile", CONFIG["configfile"]])
    records = oxford_pets(pets_sample)
    # the trimaps resized as the README says: as the config's data.pets.resize, nearest
    resize = load_config(CONFIG["config"], CONFIG["configfile"])["data"]["pets"]["resize"]
    assert resize == "crop"  # the default, seed 000's resize-and-crop
    arrays = load_arrays(records, SIZE, resize)
    masks, overlays = [], []
    for rec in records:
        with Image.open(out / f"{rec.name}.png") as im:
            assert im.mode == "L" and im.size == (SIZE, SIZE)
            masks.append(np.asarray(im))
        with Image.open(out / f"{rec.name}_overlay.png") as im:
            assert im.mode == "RGB" and im.size == (SIZE, SIZE)
            overlays.append(np.asarray(im))
    pred = np.stack(masks)
    assert set(np.unique(pred)) == {0, 1, 2}  # every class predicted: a swapped class order would show

    acc, miou = numpy_scores(pred, arrays["masks"])
    scores = evaluate_folder(segmenter, str(pets_sample), **CONFIG)
    assert scores["images"] == len(records) == 24
    assert (acc, miou) == (scores["pixel_acc"], scores["miou"])

    legend = json.loads((out / "classes.json").read_text())
    assert [c["name"] for c in legend["classes"]] == ["pet", "background", "border"]
    colours = np.array([c["colour"] for c in legend["classes"]], np.float64)
    # each overlay pixel is the input blended half-and-half with its predicted class's colour
    expected = 0.5 * arrays["images"] + 0.5 * colours[pred]
    assert np.abs(np.stack(overlays) - expected).max() <= 0.5 + 1e-9


def test_a_plain_folder_of_photos_gets_the_same_masks_named_by_relative_path(tmp_path, segmenter, pets_sample):
    photos = tmp_path / "photos"
    (photos / "garden").mkdir(parents=True)
    names = sorted(p.stem for p in (pets_sample / "images").glob("*.jpg"))[:3]
    shutil.copy(pets_sample / "images" / f"{names[0]}.jpg", photos / "garden" / "cat.jpg")
    for name in names[1:]:
        shutil.copy(pets_sample / "images" / f"{name}.jpg", photos)
    predict_masks(segmenter, str(photos), str(tmp_path / "mine"), **CONFIG)
    predict_masks(segmenter, str(pets_sample), str(tmp_path / "pets"), **CONFIG)
    pairs = [("garden/cat", names[0])] + [(n, n) for n in names[1:]]
    for mine, pet in pairs:
        assert (tmp_path / "mine" / f"{mine}_overlay.png").exists()
        assert np.array_equal(np.asarray(Image.open(tmp_path / "mine" / f"{mine}.png")),
                              np.asarray(Image.open(tmp_path / "pets" / f"{pet}.png")))
    assert json.loads((tmp_path / "mine" / "classes.json").read_text())["images"] == 3

    shutil.copy(photos / "garden" / "cat.jpg", photos / "garden" / "cat.png")
    with pytest.raises(UserError, match="two images named 'garden/cat'"):
        folder_records(str(photos))


def test_a_folder_of_photos_cannot_mix_outputs_and_inputs(tmp_path, pets_sample, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    first = sorted((pets_sample / "images").glob("*.jpg"))[0]
    shutil.copy(first, photos / "cat.jpg")
    (photos / "notes.txt").write_text("x")
    (photos / ".git").mkdir()
    (photos / ".git" / "HEAD").write_text("ref")  # a hidden folder: not the user's photos, not counted
    shutil.copy(first, photos / "scan.tif")
    # masks written into the folder would be read back as photos by the next run
    for out in (photos, photos / "masks"):
        with pytest.raises(UserError, match="inside the image folder"):
            folder_records(str(photos), str(out))
    assert len(folder_records(str(photos), str(tmp_path / "masks"))) == 1
    assert "not read (not .bmp, .jpeg, .jpg, .png, .webp): 1 .tif, 1 .txt" in capsys.readouterr().err
    # an image named like another's overlay would overwrite it
    shutil.copy(first, photos / "cat_overlay.jpg")
    with pytest.raises(UserError, match="images 'cat' and 'cat_overlay' would both write cat_overlay.png"):
        folder_records(str(photos), str(tmp_path / "masks"))


def test_an_output_that_is_a_file_is_refused_before_any_work(tmp_path, pets_sample, capsys):
    (tmp_path / "taken").write_text("")
    with pytest.raises(SystemExit) as stopped:
        main(["predict_masks", "--ckpt", "missing.pt", "--root", str(pets_sample), "--out", str(tmp_path / "taken")])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"sslseg predict_masks: error: {tmp_path / 'taken'}: is a file, not a folder; choose another output folder"]


def test_images_are_made_square_as_the_checkpoint_was_trained(tmp_path, segmenter, pets_sample):
    """A checkpoint records how its training pets were made square (data.pets.resize); scoring
    new images follows it, whatever the config says now."""
    from sslseg.models.checkpoint import read_checkpoint, save_checkpoint
    from sslseg.objectives import build_objective

    state = read_checkpoint(segmenter)
    squashed = tmp_path / "squashed.pt"
    seg = build_objective("segment", {"model": state["meta"]["settings"]["model"], "classes": 3, "dropout": 0.0,
                                      "head": "pixel"})
    seg.load_state_dict(state["model"])
    save_checkpoint(squashed, seg, {**state["meta"], "input_resize": "squash"})
    main(["predict_masks", "--ckpt", str(squashed), "--root", str(pets_sample), "--out", str(tmp_path / "m"),
          "--config", CONFIG["config"], "--configfile", CONFIG["configfile"]])
    records = oxford_pets(pets_sample)
    pred = np.stack([np.asarray(Image.open(tmp_path / "m" / f"{r.name}.png")) for r in records])
    acc, miou = numpy_scores(pred, load_arrays(records, SIZE, "squash")["masks"])
    scores = evaluate_folder(str(squashed), str(pets_sample), **CONFIG)
    assert (acc, miou) == (scores["pixel_acc"], scores["miou"])
    assert json.loads((tmp_path / "m" / "classes.json").read_text())["resize"] == "squash"
    assert scores["pixel_acc"] != evaluate_folder(segmenter, str(pets_sample), **CONFIG)["pixel_acc"]
