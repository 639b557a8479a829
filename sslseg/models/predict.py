"""Inference: a trained objective loaded strictly from its checkpoint, and batched argmax
predictions on uint8 images (what evaluation, the example figures and the benchmark run)."""

from __future__ import annotations

import numpy as np
import torch

from sslseg.data.augment import augment
from sslseg.io import UserError
from sslseg.models.checkpoint import load_model
from sslseg.objectives import build_objective
from sslseg.train import autocast, pick_device


def load_for_eval(ckpt: str, settings: dict) -> torch.nn.Module:
    """settings["objective"] (segment or classify) of settings["model"] with settings["classes"],
    loaded strictly from `ckpt`; no dropout or MixUp (they act in training only anyway)."""
    model = build_objective(settings["objective"], {**settings, "dropout": 0.0, "mixup_alpha": 0.0})
    load_model(model, ckpt)
    return model


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
