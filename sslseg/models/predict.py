"""Inference: a trained objective loaded strictly from its checkpoint, and batched argmax
predictions on uint8 images (what evaluation, the example figures and the benchmark run)."""

from __future__ import annotations

import numpy as np
import torch

from sslseg.data.augment import augment
from sslseg.io import UserError
from sslseg.models.checkpoint import load_model, read_checkpoint
from sslseg.objectives import build_objective
from sslseg.train import autocast, pick_device


# The stages whose checkpoints each objective is evaluated from, and what their paths look like.
TRAINED_BY = {"segment": (("finetune", "probe"), "runs/.../model.pt"),
              "classify": (("intermediate",), "intermediate/.../model.pt")}


ARCHITECTURE = ("model", "head")  # the settings that shape a trained model's weights


def trained_settings(ckpt: str, meta: dict, settings: dict, stages: tuple[str, ...] | None = None,
                     where: str = "") -> dict:
    """`settings` with the settings the checkpoint `ckpt` (with `meta`) was trained with (its
    ARCHITECTURE; for a pretraining checkpoint, all of them) and `trained_by` its stage: a
    consumer builds the model the checkpoint holds, whatever preset or image size the config
    names now. A checkpoint of a stage not in `stages` (default: the one that trains
    settings["objective"]) is refused with one line saying what it is."""
    if stages is None:
        stages, where = TRAINED_BY[settings["objective"]]
    made_by = meta.get("stage", "unknown")
    if made_by not in stages:
        what = " (a self-supervised encoder: it has no trained head)" if made_by == "pretrain" else ""
        raise UserError(f"{ckpt}: written by the {made_by!r} stage{what}; this needs a {' or '.join(stages)} "
                        f"checkpoint ({where})")
    if "model" not in meta.get("settings", {}):
        raise UserError(f"{ckpt}: its meta records no model settings; was it written by sslseg? rerun its stage")
    trained = meta["settings"] if made_by == "pretrain" else \
        {k: meta["settings"][k] for k in ARCHITECTURE if k in meta["settings"]}
    resize = {"input_resize": meta["input_resize"]} if meta.get("input_resize") else {}
    return {**settings, **trained, **resize, "trained_by": made_by}


def load_for_eval(ckpt: str, settings: dict) -> tuple[torch.nn.Module, dict]:
    """settings["objective"] (segment or classify) with settings["classes"], built with the model
    settings recorded in `ckpt` and loaded strictly from it; no dropout or MixUp (they act in
    training only anyway). Returns the model and the settings it was built with."""
    state = read_checkpoint(ckpt)
    settings = trained_settings(ckpt, state.get("meta", {}), settings)
    model = build_objective(settings["objective"], {**settings, "dropout": 0.0, "mixup_alpha": 0.0})
    load_model(model, ckpt, state)
    return model, settings


@torch.no_grad()
def predict_classes(model: torch.nn.Module, images: np.ndarray | torch.Tensor, settings: dict) -> torch.Tensor:
    """uint8 (N, H, W, 3) → the argmax class on the CPU: (N, S, S) pixels for a segmenter
    (logits (B, C, S, S)), (N,) images for a classifier (logits (B, C)).
    settings: model.image_size, device, batch_size, amp."""
    device, size, bs = pick_device(settings["device"]), settings["model"]["image_size"], settings["batch_size"]
    model.eval().to(device)
    images = torch.as_tensor(images)
    out = []
    for i in range(0, len(images), bs):
        x, _ = augment(images[i:i + bs].to(device), None, size, None)
        with autocast(settings["amp"], device):
            out.append(model.predict(x).argmax(1).cpu())
    if not out:
        raise UserError("evaluate: no images to predict")
    return torch.cat(out)
