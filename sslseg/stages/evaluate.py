"""Evaluation stages: segmentation metrics on the test rows, intermediate accuracy, and any
checkpoint on any Oxford-layout folder."""

from __future__ import annotations

import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from sslseg.data import sources
from sslseg.data.augment import augment
from sslseg.data.pack import load_arrays, read_pack
from sslseg.data.splits import read_rows
from sslseg.io import UserError, write_json, write_sidecar
from sslseg.metrics import confusion, scores
from sslseg.models.checkpoint import load_model, read_checkpoint
from sslseg.objectives import build_objective
from sslseg.train import autocast, pick_device


@torch.no_grad()
def predict_classes(model: torch.nn.Module, images: np.ndarray | torch.Tensor, size: int, device: torch.device,
                    batch_size: int, amp: str = "auto") -> torch.Tensor:
    """uint8 (N, H, W, 3) → the argmax class on the CPU: (N, S, S) pixels for a segmenter
    (logits (B, C, S, S)), (N,) images for a classifier (logits (B, C))."""
    model.eval().to(device)
    images = torch.as_tensor(images)
    out = []
    for i in range(0, len(images), batch_size):
        x, _ = augment(images[i:i + batch_size].to(device), None, size, None)
        with autocast(amp, device):
            out.append(model.predict(x).argmax(1).cpu())
    if not out:
        raise UserError("evaluate: no images to predict")
    return torch.cat(out)


def load_for_eval(objective: str, ckpt: str, settings: dict, classes: int) -> torch.nn.Module:
    """The `objective` model of `settings["model"]`, loaded strictly from `ckpt`."""
    model = build_objective(objective, {**settings, "classes": classes, "dropout": 0.0, "mixup_alpha": 0.0})
    load_model(model, ckpt)
    return model


def score_segmenter(ckpt: str, arrays: dict, settings: dict) -> dict:
    device = pick_device(settings["device"])
    model = load_for_eval("segment", ckpt, settings, 3)
    pred = predict_classes(model, arrays["images"], settings["model"]["image_size"], device, settings["batch_size"],
                           settings["amp"])
    masks = torch.as_tensor(arrays["masks"]).long()
    if masks.shape[-1] != pred.shape[-1]:  # labels stay at pack resolution; score at model resolution
        masks = F.interpolate(masks[:, None].float(), size=pred.shape[-2:], mode="nearest")[:, 0].long()
    return scores(confusion(pred, masks, 3))


def evaluate(ckpt: str, pets: str, rows: str, out: str, settings: dict, run: dict, threads: int = 1) -> dict:
    """Pixel accuracy, per-class IoU, mIoU and foreground IoU of `ckpt` on the test rows,
    written with the run's grid coordinates (`run`, from sslseg.grid)."""
    t0 = time.time()
    torch.set_num_threads(threads)
    test_rows = read_rows(rows)
    result = score_segmenter(ckpt, read_pack(pets, np.sort(test_rows)), settings)
    result.update(images=len(test_rows), checkpoint=str(ckpt), run=run)
    write_json(out, result)
    write_sidecar(out, "evaluate", settings, t0, device=str(pick_device(settings["device"])))
    return result


def intermediate_eval(ckpt: str, pack: str, out: str, settings: dict, run: dict, threads: int = 1) -> dict:
    """Top-1 accuracy of an intermediate classifier on its test pack."""
    t0 = time.time()
    torch.set_num_threads(threads)
    device = pick_device(settings["device"])
    model = load_for_eval("classify", ckpt, settings, settings["classes"])
    arrays = read_pack(pack, None, ("images", "labels"))
    pred = predict_classes(model, arrays["images"], settings["model"]["image_size"], device, settings["batch_size"],
                           settings["amp"])
    correct = int((pred == torch.as_tensor(arrays["labels"]).long()).sum())
    result = {"accuracy": correct / len(arrays["images"]), "images": len(arrays["images"]), "checkpoint": str(ckpt),
              "run": run}
    write_json(out, result)
    write_sidecar(out, "intermediate_eval", settings, t0, device=str(device))
    return result


def evaluate_folder(ckpt: str, root: str, out: str | None = None, config: str = "config.yaml",
                    configfile: str | None = None, threads: int = 1) -> dict:
    """Score any fine-tune checkpoint on every image of an Oxford-layout folder (no packing to
    disk). The model settings come from the checkpoint; device and batch size from the config."""
    from sslseg.config import eval_settings, load_config

    torch.set_num_threads(threads)
    meta = read_checkpoint(ckpt).get("meta", {})
    if meta.get("stage") != "finetune":
        raise UserError(f"{ckpt}: written by the {meta.get('stage', 'unknown')!r} stage; evaluate-folder scores "
                        "segmentation fine-tunes (runs/.../model.pt)")
    model = meta["settings"]["model"]
    settings = {**eval_settings(load_config(config, configfile), model["backbone"]), "model": model}
    records = sources.oxford_pets(root)
    arrays = load_arrays(records, model["image_size"], "squash", threads)
    result = {**score_segmenter(ckpt, arrays, settings), "images": len(records), "checkpoint": str(ckpt)}
    print(json.dumps(result, indent=2))
    if out:
        write_json(out, result)
    return result
