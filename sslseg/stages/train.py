"""Training stages: self-supervised pretraining, the intermediate classifier, the segmentation
fine-tune. Each builds its objective by name and hands it to the one loop (sslseg.train.fit)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from sslseg.data.augment import make_transform
from sslseg.data.loader import Batches
from sslseg.data.pack import pack_attrs, pack_length
from sslseg.data.splits import read_rows
from sslseg.io import Output, UserError, write_sidecar
from sslseg.models.checkpoint import load_backbone, save_checkpoint
from sslseg.objectives import build_objective
from sslseg.optim import scale_for_device
from sslseg.runtime import job_runtime
from sslseg.train import fit, pick_device


def _train(objective: torch.nn.Module, pack_file: str, rows: np.ndarray | None, label_key: str | None,
           settings: dict, runtime: dict, out: str, log: str, labels: str | None = None) -> dict:
    device = pick_device(settings["device"])
    settings = scale_for_device(settings, device)
    keys = ("images", "aspect") + ((label_key,) if label_key else ())  # "aspect": packs of whole images only
    batches = Batches(pack_file, rows, settings["batch_size"], device, keys, runtime["memory_gb"],
                      drop_last=settings["drop_last"], masks=labels)
    transform = make_transform(settings["augment"], settings["model"]["image_size"], label_key)
    resume = Path(out).with_name(f".{Path(out).name}.resume")
    stats = fit(objective, batches, transform, settings, runtime=runtime, name=settings["stage"],
                resume_path=resume, log_path=Path(log))
    # how the training images were made square (data.*.resize), so tools scoring new images
    # (evaluate_folder, predict_masks) prepare them the same way
    resize = pack_attrs(pack_file).get("resize")
    save_checkpoint(out, objective, {"stage": settings["stage"], "settings": settings, "input_resize": resize})
    resume.unlink(missing_ok=True)
    stats.update(images=batches.n, batch_size=settings["batch_size"], lr=settings["lr"])
    return stats


def _init_from(objective: torch.nn.Module, init: str | None) -> list[str]:
    if not init:
        return []
    dropped = load_backbone(objective, init)
    print(f"loaded backbone from {init}; dropped its head: {', '.join(dropped) or 'nothing'}", flush=True)
    return dropped


def _fit_stage(pack: str, rows: np.ndarray | None, label_key: str | None, out: str, log: str, settings: dict,
               runtime: dict | None, init: str | None, threads: int, labels: str | None = None) -> None:
    """Build the stage's objective, load `init`'s backbone, train, write the checkpoint and sidecar.
    `runtime`: log_every, checkpoint_every, memory_gb, progress (None: see sslseg.runtime)."""
    t0 = time.time()
    runtime = job_runtime(runtime)
    torch.set_num_threads(threads)
    torch.manual_seed(settings["seed"])
    objective = build_objective(settings["objective"], settings)
    dropped = _init_from(objective, init)
    stats = _train(objective, pack, rows, label_key, settings, runtime, out, log, labels)
    write_sidecar(out, settings["stage"], settings, t0, seed=settings["seed"], init=init, dropped_keys=dropped,
                  labels=labels, **stats)


def pretrain(pack: str, size: int, out: Output, log: Output, settings: dict, runtime: dict | None = None,
             threads: int = 1) -> None:
    """The self-supervised objective `settings["objective"]` on the first `size` rows of the pack."""
    packed = pack_length(pack)
    if size > packed:
        raise UserError(f"grid.pretrain_sizes: {size} is larger than the {packed} packed images in {pack}")
    _fit_stage(pack, np.arange(size), None, out, log, settings, runtime, None, threads)


def intermediate(pack: str, out: Output, log: Output, settings: dict, runtime: dict | None = None,
                 init: str | None = None, threads: int = 1) -> None:
    """Supervised classification on the intermediate dataset, starting from `init`'s backbone."""
    _fit_stage(pack, None, "labels", out, log, settings, runtime, init, threads)


def finetune(pets: str, rows: str, out: Output, log: Output, settings: dict, runtime: dict | None = None,
             init: str | None = None, labels: str | None = None, threads: int = 1) -> None:
    """Segmentation on the pets rows listed in `rows`, from `init` (or scratch): a fine-tune or a
    frozen probe (settings["stage"]), on the true trimaps or on the imperfect `labels` pack."""
    _fit_stage(pets, read_rows(rows), "masks", out, log, settings, runtime, init, threads, labels)


def probe(pets: str, rows: str, out: Output, log: Output, settings: dict, runtime: dict | None = None,
          init: str | None = None, labels: str | None = None, threads: int = 1) -> None:
    """A frozen probe: the fine-tune stage with the `probe:` recipe, whose settings freeze the
    backbone (sslseg.config.FROZEN); its own command so the DAG lists probes by name."""
    finetune(pets, rows, out, log, settings, runtime, init, labels, threads)
