"""Evaluation stages: segmentation metrics of a fine-tune on the test rows, and the accuracy of
an intermediate classifier on its test pack."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sslseg.data.pack import read_pack
from sslseg.data.splits import read_rows
from sslseg.io import Output, read_json, write_json, write_sidecar
from sslseg.metrics import confusion, scores
from sslseg.models.predict import load_for_eval, predict_classes


def score_segmenter(loaded: tuple[torch.nn.Module, dict], arrays: dict) -> dict:
    """Scores of a segmenter (`load_for_eval`'s model and settings) on uint8 images and trimap
    classes (one confusion matrix)."""
    model, settings = loaded
    pred = predict_classes(model, arrays["images"], settings)
    masks = torch.as_tensor(arrays["masks"]).long()
    if masks.shape[-1] != pred.shape[-1]:  # labels stay at pack resolution; score at model resolution
        masks = F.interpolate(masks[:, None].float(), size=pred.shape[-2:], mode="nearest")[:, 0].long()
    return scores(confusion(pred, masks, settings["classes"]))


def evaluate(ckpt: str, pets: str, rows: str, out: Output, settings: dict, run: dict, threads: int = 1) -> dict:
    """Pixel accuracy, per-class IoU, mIoU and foreground IoU of `ckpt` on the test rows,
    written with the run's grid coordinates (`run`, from sslseg.grid) and `labelled_images`, the
    images the run trained on (its fine-tune size resolved, read from `ckpt`'s sidecar)."""
    t0 = time.time()
    torch.set_num_threads(threads)
    test_rows = read_rows(rows)
    result = score_segmenter(load_for_eval(ckpt, settings), read_pack(pets, np.sort(test_rows)))
    result.update(images=len(test_rows), checkpoint=str(ckpt), run=run)
    trained = Path(f"{ckpt}.json")  # the fine-tune's sidecar: `images` is a fraction's resolved count
    if trained.exists() and "images" in (side := read_json(trained)):
        result["labelled_images"] = side["images"]
    write_json(out, result)
    write_sidecar(out, "evaluate", settings, t0, device=settings["device"])
    return result


def intermediate_eval(ckpt: str, pack: str, out: Output, settings: dict, run: dict, threads: int = 1) -> dict:
    """Top-1 accuracy of an intermediate classifier on its test pack."""
    t0 = time.time()
    torch.set_num_threads(threads)
    arrays = read_pack(pack, None, ("images", "labels"))
    model, settings = load_for_eval(ckpt, settings)
    pred = predict_classes(model, arrays["images"], settings)
    correct = int((pred == torch.as_tensor(arrays["labels"]).long()).sum())
    result = {"accuracy": correct / len(arrays["images"]), "images": len(arrays["images"]), "checkpoint": str(ckpt),
              "run": run}
    write_json(out, result)
    write_sidecar(out, "intermediate_eval", settings, t0, device=settings["device"])
    return result
