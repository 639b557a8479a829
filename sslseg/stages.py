"""One function per workflow stage: explicit inputs and outputs, usable without Snakemake.

Each takes the stage's settings (a validated slice of the config; see
workflow/schemas/config.schema.yaml) and writes its artifacts atomically, with
a `<artifact>.json` provenance sidecar.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from sslseg.data import sources
from sslseg.data.augment import augment
from sslseg.data.loader import Batches
from sslseg.data.pack import load_arrays, pack, pack_length, read_pack
from sslseg.data.splits import draw_test_split, finetune_subset
from sslseg.io import UserError, atomic_path, write_json, write_sidecar
from sslseg.metrics import confusion, scores
from sslseg.models.checkpoint import load_backbone, load_model, save_checkpoint
from sslseg.objectives import Classify, Segment, SimMIM
from sslseg.train import autocast, fit, pick_device


def read_rows(path: str | Path) -> np.ndarray:
    try:
        return np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable index file ({e}); delete it and rerun the splits stage") from None


def write_rows(path: str | Path, rows: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.savetxt(tmp, np.asarray(rows, dtype=np.int64), fmt="%d")


# --- data -------------------------------------------------------------------------------------

def pack_pets(root: str, out: str, settings: dict, threads: int = 1) -> None:
    """Oxford-IIIT Pet (official layout) → HDF5 with images and trimap classes 0/1/2."""
    t0 = time.time()
    records = sources.oxford_pets(root, settings.get("download", False))
    pack(records, out, settings["image_size"], "squash", threads, {"source": str(root)})
    write_sidecar(out, "pack_pets", settings, t0, images=len(records))


def pack_folder(root: str, out: str, settings: dict, threads: int = 1) -> None:
    """A folder of images → HDF5; with settings["size"], a seeded nested subset of that size
    (rows in subset order, so the first n rows are the subset of size n).

    settings: pack_size, resize, and optionally size/subset/subset_seed (pretraining),
    classes (fixed label order, e.g. Intel's six), kind ("pretrain"/"intermediate", for
    the message naming where to get missing data), source ("imagenette" fetches it).
    """
    t0 = time.time()
    if settings.get("source") == "imagenette":
        root = str(sources.imagenette(root, settings.get("download", False)))
    records = sources.image_folder(root, settings.get("classes"), sources.HINTS.get(settings.get("kind", ""), ""))
    if settings.get("size"):
        records = sources.subset_records(records, settings["size"], settings.get("subset_seed", 0),
                                         settings.get("subset", "random"))
    classes = settings.get("classes") or sorted({r.image.parent.name for r in records})
    pack(records, out, settings["pack_size"], settings.get("resize", "crop"), threads,
         {"source": str(root), "classes": list(classes)})
    write_sidecar(out, "pack_folder", settings, t0, images=len(records))


def splits(pets: str, test_out: str, pool_out: str, settings: dict) -> None:
    """The test set (seeded, default 42) and the fine-tune pool, as row-index files."""
    pool, test = draw_test_split(pack_length(pets), settings["test_size"], settings["test_seed"])
    write_rows(test_out, np.sort(test))
    write_rows(pool_out, pool)


def subset(pool_file: str, out: str, size: int, seed: int) -> None:
    write_rows(out, np.sort(finetune_subset(read_rows(pool_file), size, seed)))


# --- training ---------------------------------------------------------------------------------

def _transform(aug: dict, size: int, label_key: str | None) -> callable:
    def apply(raw: dict, gen: torch.Generator) -> dict:
        images, masks = augment(raw["images"], raw.get("masks") if label_key == "masks" else None, size, gen,
                                aug.get("scale", (1.0, 1.0)), aug.get("ratio", (1.0, 1.0)),
                                aug.get("flip", 0.0), aug.get("jitter", 0.0))
        batch = {"images": images}
        if label_key == "masks":
            batch["masks"] = masks
        elif label_key:
            batch[label_key] = raw[label_key]
        return batch
    return apply


def scale_for_device(settings: dict, device: torch.device) -> dict:
    """On CUDA, batch x train.cuda_batch_multiplier with the LR scaled by train.lr_scaling."""
    m = settings.get("cuda_batch_multiplier", 1) if device.type == "cuda" else 1
    if m == 1:
        return settings
    factor = {"linear": m, "sqrt": m**0.5, "none": 1}[settings.get("lr_scaling", "linear")]
    return {**settings, "batch_size": settings["batch_size"] * m, "lr": settings["lr"] * factor}


def _train(objective, pack_file, rows, label_key, settings, out, log) -> dict:
    device = pick_device(settings.get("device", "auto"))
    settings = scale_for_device(settings, device)
    keys = ("images",) + ((label_key,) if label_key else ())
    batches = Batches(pack_file, rows, settings["batch_size"], device, keys, settings.get("memory_gb", 8.0))
    transform = _transform(settings.get("augment", {}), settings["model"]["image_size"], label_key)
    resume = Path(out).with_name(f".{Path(out).name}.resume")
    stats = fit(objective, batches, transform, settings, name=settings["stage"], resume_path=resume, log_path=Path(log))
    save_checkpoint(out, objective, {"stage": settings["stage"], "settings": settings})
    resume.unlink(missing_ok=True)
    stats.update(images=batches.n, batch_size=settings["batch_size"], lr=settings["lr"])
    return stats


def pretrain(pack_file: str, size: int, out: str, log: str, settings: dict) -> None:
    """SimMIM on the first `size` rows of the pretraining pack."""
    t0 = time.time()
    if size > pack_length(pack_file):
        raise UserError(f"grid.pretrain_sizes: {size} is larger than the {pack_length(pack_file)} packed images in {pack_file}")
    torch.manual_seed(settings["seed"])
    objective = SimMIM(settings["model"], settings["mask_ratio"])
    stats = _train(objective, pack_file, np.arange(size), None, settings, out, log)
    write_sidecar(out, "pretrain", settings, t0, seed=settings["seed"], **stats)


def _init_from(objective, init: str | None) -> list[str]:
    if not init:
        return []
    dropped = load_backbone(objective, init)
    print(f"loaded backbone from {init}; dropped its head: {', '.join(dropped) or 'nothing'}", flush=True)
    return dropped


def intermediate(train_pack: str, init: str | None, out: str, log: str, settings: dict) -> None:
    """Supervised classification on the intermediate dataset, starting from `init`'s backbone."""
    t0 = time.time()
    torch.manual_seed(settings["seed"])
    objective = Classify(settings["model"], settings["classes"], settings["dropout"], settings["mixup_alpha"])
    dropped = _init_from(objective, init)
    stats = _train(objective, train_pack, None, "labels", settings, out, log)
    write_sidecar(out, "intermediate", settings, t0, seed=settings["seed"], init=init, dropped_keys=dropped, **stats)


def finetune(pets: str, rows_file: str, init: str | None, out: str, log: str, settings: dict) -> None:
    """Segmentation fine-tune on the pets rows in `rows_file`, from `init` (or scratch)."""
    t0 = time.time()
    torch.manual_seed(settings["seed"])
    objective = Segment(settings["model"], 3, settings["dropout"])
    dropped = _init_from(objective, init)
    stats = _train(objective, pets, read_rows(rows_file), "masks", settings, out, log)
    write_sidecar(out, "finetune", settings, t0, seed=settings["seed"], init=init, dropped_keys=dropped, **stats)


# --- evaluation -------------------------------------------------------------------------------

@torch.no_grad()
def predict_classes(model: Segment | Classify, images: np.ndarray | torch.Tensor, size: int, device: torch.device,
                    batch_size: int = 128, amp: str = "auto") -> torch.Tensor:
    """uint8 (N, H, W, 3) → the argmax class on the CPU: (N, S, S) pixels for a Segment,
    (N,) images for a Classify."""
    model.eval().to(device)
    images = torch.as_tensor(images)
    out = []
    for i in range(0, len(images), batch_size):
        x, _ = augment(images[i:i + batch_size].to(device), None, size, None)
        with autocast(amp, device):
            out.append(model.predict(x).argmax(1).cpu())
    if not out:
        return torch.empty((0, size, size) if isinstance(model, Segment) else (0,), dtype=torch.long)
    return torch.cat(out)


def score_segmenter(ckpt: str, arrays: dict, settings: dict) -> dict:
    device = pick_device(settings.get("device", "auto"))
    model = Segment(settings["model"], 3)
    load_model(model, ckpt)
    pred = predict_classes(model, arrays["images"], settings["model"]["image_size"], device, settings["batch_size"])
    masks = torch.as_tensor(arrays["masks"]).long()
    if masks.shape[-1] != pred.shape[-1]:  # labels stay at pack resolution; score at model resolution
        masks = torch.nn.functional.interpolate(masks[:, None].float(), size=pred.shape[-2:], mode="nearest")[:, 0].long()
    return scores(confusion(pred, masks, 3))


def evaluate(ckpt: str, pets: str, rows_file: str, out: str, settings: dict) -> dict:
    """Pixel accuracy, per-class IoU, mIoU and foreground IoU of `ckpt` on the test rows."""
    t0 = time.time()
    rows = read_rows(rows_file)
    result = score_segmenter(ckpt, read_pack(pets, np.sort(rows)), settings)
    result.update(images=len(rows), checkpoint=str(ckpt))
    write_json(out, result)
    write_sidecar(out, "evaluate", settings, t0, device=str(pick_device(settings.get("device", "auto"))))
    return result


def evaluate_folder(ckpt: str, root: str, settings: dict, threads: int = 1) -> dict:
    """Evaluate any checkpoint on every image of an Oxford-layout folder (no packing to disk)."""
    records = sources.oxford_pets(root)
    arrays = load_arrays(records, settings["model"]["image_size"], "squash", threads)
    return {**score_segmenter(ckpt, arrays, settings), "images": len(records), "checkpoint": str(ckpt)}


def intermediate_accuracy(ckpt: str, test_pack: str, out: str, settings: dict) -> dict:
    """Top-1 accuracy of an intermediate classifier on its test pack."""
    t0 = time.time()
    device = pick_device(settings.get("device", "auto"))
    model = Classify(settings["model"], settings["classes"])
    load_model(model, ckpt)
    arrays = read_pack(test_pack, None, ("images", "labels"))
    pred = predict_classes(model, arrays["images"], settings["model"]["image_size"], device, settings["batch_size"])
    correct = int((pred == torch.as_tensor(arrays["labels"]).long()).sum())
    result = {"accuracy": correct / len(arrays["images"]), "images": len(arrays["images"]), "checkpoint": str(ckpt)}
    write_json(out, result)
    write_sidecar(out, "intermediate_eval", settings, t0, device=str(device))
    return result
