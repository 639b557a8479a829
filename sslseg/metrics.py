"""Confusion matrix → pixel accuracy, per-class IoU, mIoU, foreground IoU.

Accumulate one confusion matrix over the whole test set, then score it once:
averaging per-image IoUs instead would weight small pets as much as large ones.
"""

from __future__ import annotations

import torch

TRIMAP_CLASSES = ("pet", "background", "border")


def confusion(pred: torch.Tensor, target: torch.Tensor, classes: int, ignore: int = 255) -> torch.Tensor:
    """(classes, classes) int64 counts, rows = truth, columns = prediction."""
    keep = target != ignore
    idx = target[keep].long() * classes + pred[keep].long()
    return torch.bincount(idx, minlength=classes * classes).reshape(classes, classes).cpu()


def scores(conf: torch.Tensor, names: tuple[str, ...] = TRIMAP_CLASSES, background: int = 1) -> dict:
    """Scores from a confusion matrix.

    Per-class IoU = TP / (TP + FP + FN); a class absent from both truth and
    prediction has no IoU and is left out of the mean. Foreground IoU is the
    binary IoU of {pet, border} against background (the usual pet-vs-rest mask).
    """
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    fg = [i for i in range(len(names)) if i != background]
    fg_tp = conf[fg][:, fg].sum()
    fg_union = conf[fg].sum() + conf[:, fg].sum() - fg_tp
    total = conf.sum()
    return {
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "iou": {n: float(v) for n, v in zip(names, iou)},
        "miou": float(iou[~iou.isnan()].mean()) if (~iou.isnan()).any() else float("nan"),
        "fg_iou": float(fg_tp / fg_union) if fg_union > 0 else float("nan"),
        "pixels": int(total),
    }
