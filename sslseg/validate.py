"""Per-epoch validation of a segmenter (`--val` of the fine-tune and probe stages): after each
epoch `sslseg.train.fit` scores the model on the validation rows of the pets pack, as
sslseg.stages.evaluate scores the test rows (eval mode, no augmentation, one confusion matrix
over all images, sslseg.metrics), and adds val_loss, val_miou and val_pixel_acc to that epoch's
row of log.csv. The images stay on the CPU as uint8 and go to the device a batch at a time."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sslseg.data.augment import augment
from sslseg.data.pack import read_pack
from sslseg.io import UserError
from sslseg.metrics import confusion, scores
from sslseg.train import autocast

COLUMNS = ("val_loss", "val_miou", "val_pixel_acc")


def segmentation_validator(pack: str, rows: np.ndarray, settings: dict,
                           device: torch.device) -> Callable[[nn.Module], dict]:
    """A function (objective → {val_loss, val_miou, val_pixel_acc}) scoring a segmentation
    objective on `rows` of `pack` (its true trimaps, whatever labels it trains on).
    settings: the stage's (model.image_size, batch_size, classes, amp). val_loss is the
    objective's own training loss on the unaugmented images, averaged over images."""
    if len(rows) == 0:
        raise UserError("data.pets.split: the validation rows are empty (test_draw has no validation set); "
                        "use train_val_test or drop --val")
    arrays = read_pack(pack, np.sort(rows), ("images", "masks"))
    images, masks = torch.as_tensor(arrays["images"]), torch.as_tensor(arrays["masks"]).long()
    size, bs, classes = settings["model"]["image_size"], settings["batch_size"], settings["classes"]

    @torch.no_grad()
    def validate(objective: nn.Module) -> dict:
        objective.eval()
        conf = torch.zeros(classes, classes, dtype=torch.int64)
        loss_sum = torch.zeros((), device=device)
        for i in range(0, len(images), bs):
            x, _ = augment(images[i:i + bs].to(device), None, size, None)
            m = masks[i:i + bs].to(device)
            if m.shape[-1] != size:  # labels stay at pack resolution; score at model resolution (as evaluate)
                m = F.interpolate(m[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
            with autocast(settings["amp"], device):
                loss, out = objective({"images": x, "masks": m}, None)
            loss_sum += loss.float() * len(x)
            conf += confusion(out["logits"].argmax(1), m, classes)
        s = scores(conf)
        return {"val_loss": loss_sum.item() / len(images), "val_miou": s["miou"], "val_pixel_acc": s["pixel_acc"]}

    return validate
