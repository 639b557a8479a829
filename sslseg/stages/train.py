"""Training stages: self-supervised pretraining, the intermediate classifier, the segmentation
fine-tune. Each builds its objective by name and hands it to the one loop (sslseg.train.fit)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import torch

from sslseg.data.augment import make_transform
from sslseg.data.loader import Batches
from sslseg.data.pack import pack_attrs, pack_length
from sslseg.data.splits import read_rows
from sslseg.io import Output, UserError, write_sidecar
from sslseg.models.checkpoint import is_checkpoint, load_init, save_checkpoint
from sslseg.models.weights import load_weights
from sslseg.objectives import build_objective
from sslseg.optim import device_scaling, scale_for_device
from sslseg.runtime import job_runtime
from sslseg.sourcefiles import command_files
from sslseg.train import fit, pick_device
from sslseg.validate import segmentation_validator


def resume_inputs(settings: dict, pack_file: str, rows: np.ndarray | None, labels: str | None,
                  init: str | None) -> dict:
    """What a stage's resume file must have been written from besides its settings (sslseg.train.fit):
    each file it starts from or reads (size and modification time: an upstream stage that reran has
    rewritten it), the rows it trains on, and the code the stage runs (the files the workflow
    tracks for it). A pretraining rerun changes its checkpoint, so a fine-tune stopped part-way
    before starts over rather than finishing from the old pretraining."""
    def identity(path: str | None) -> list | None:
        # not the path: the same file named another way (--directory, an absolute path) still resumes
        if not path:
            return None
        try:
            st = os.stat(path)
        except OSError:  # missing: the stage's reader says so in its own words
            return [None, None]
        return [st.st_size, st.st_mtime_ns]

    root = Path(__file__).resolve().parents[2]  # the folder holding sslseg/
    code = hashlib.sha256()
    for f in command_files("sslseg.stages.train", [f"sslseg.objectives.{settings['objective']}"], root):
        code.update(f.encode() + b"\0" + (root / f).read_bytes())
    return {"pack": identity(pack_file), "labels": identity(labels),
            "init": identity(init or settings["model"].get("weights")),
            "rows": None if rows is None else hashlib.sha256(np.asarray(rows, np.int64).tobytes()).hexdigest(),
            "code": code.hexdigest()}


def _train(objective: torch.nn.Module, pack_file: str, rows: np.ndarray | None, label_key: str | None,
           settings: dict, runtime: dict, out: str, log: str, labels: str | None = None,
           val_rows: np.ndarray | None = None, init: str | None = None) -> dict:
    """`val_rows`: rows of `pack_file` to score the segmenter on after every epoch (sslseg.validate).
    `init`: the checkpoint or weights the objective was loaded from (part of the resume's identity)."""
    device = pick_device(settings["device"])
    images = pack_length(pack_file) if rows is None else len(rows)
    inputs = resume_inputs(settings, pack_file, rows, labels, init)  # before any scaling: the stage as configured
    scaling = device_scaling(settings, device, images)  # (the batch never exceeds the stage's images)
    settings = scale_for_device(settings, device, images)
    keys = ("images", "aspect") + ((label_key,) if label_key else ())  # "aspect": packs of whole images only
    batches = Batches(pack_file, rows, settings["batch_size"], device, keys, runtime["memory_gb"],
                      drop_last=settings["drop_last"], masks=labels, gpu_memory_gb=runtime.get("gpu_memory_gb"))
    b = batches.batch_size
    if settings["stage"] == "finetune" and getattr(getattr(objective, "backbone", None), "batch_norm", False) \
            and not settings["drop_last"] and batches.n % b == 1:  # (sslseg.config checks the counts it knows)
        raise UserError(f"finetune.batch_size: {b} leaves a last batch of one image for the {batches.n} images of "
                        f"this run, which BatchNorm ({settings['model']['backbone']}) cannot train on; change the "
                        "batch or set finetune.drop_last true")
    transform = make_transform(settings["augment"], settings["model"]["image_size"], label_key)
    resume = Path(out).with_name(f".{Path(out).name}.resume")
    validate = None if val_rows is None else segmentation_validator(pack_file, val_rows, settings, device)
    stats = fit(objective, batches, transform, settings, runtime=runtime, name=settings["stage"],
                resume_path=resume, log_path=Path(log), validate=validate, inputs=inputs)
    # how the training images were made square (data.*.resize), so tools scoring new images
    # (evaluate_folder, predict_masks) prepare them the same way
    resize = pack_attrs(pack_file).get("resize")
    save_checkpoint(out, objective, {"stage": settings["stage"], "settings": settings, "input_resize": resize})
    resume.unlink(missing_ok=True)
    # the sidecar's record of what the device changed: effective batch, multiplier, LR factor and rule
    stats.update(images=batches.n, batch_size=settings["batch_size"], lr=settings["lr"], device_scaling=scaling)
    if val_rows is not None:
        stats.update(val_images=len(val_rows))
    return stats


def _init_from(objective: torch.nn.Module, init: str | None, model: dict) -> list[str]:
    """Load `init`'s backbone, and its UNet decoder where both have one (sslseg.models.checkpoint.
    load_init; not for an objective with `init_decoder = False`: DDeP trains its decoder from
    scratch). `init` may also be a plain weights file (torchvision, timm: sslseg.models.weights).
    Without `init`, the backbone's model.weights file if the config names one. An objective
    with `needs_init` (DDeP: its frozen encoder) refuses to start without either."""
    needs = getattr(objective, "needs_init", None)
    if not init and model.get("weights"):
        dropped = load_weights(objective.backbone, model["weights"], f"model.weights.{model['backbone']}")
        print(f"loaded backbone weights {model['weights']}; not loaded: {', '.join(dropped) or 'nothing'}", flush=True)
        return dropped
    if not init:
        if needs:
            raise UserError(f"{needs}: {type(objective).__name__} trains on a frozen encoder loaded from a checkpoint, "
                            "and the stage got none (--init)")
        return []
    if not is_checkpoint(init):
        return load_weights(objective.backbone, init, needs or "--init")
    dropped = load_init(objective, init, decoder=getattr(objective, "init_decoder", True))
    print(f"loaded {init} (its backbone, and its decoder where both have one); not loaded: "
          f"{', '.join(dropped) or 'nothing'}", flush=True)
    return dropped


def _fit_stage(pack: str, rows: np.ndarray | None, label_key: str | None, out: str, log: str, settings: dict,
               runtime: dict | None, init: str | None, threads: int, labels: str | None = None,
               val_rows: np.ndarray | None = None) -> None:
    """Build the stage's objective, load `init`'s backbone, train, write the checkpoint and sidecar.
    `runtime`: log_every, checkpoint_every, memory_gb, gpu_memory_gb, progress (None: see sslseg.runtime)."""
    t0 = time.time()
    runtime = job_runtime(runtime)
    torch.set_num_threads(threads)
    torch.manual_seed(settings["seed"])
    objective = build_objective(settings["objective"], settings)
    dropped = _init_from(objective, init, settings["model"])
    stats = _train(objective, pack, rows, label_key, settings, runtime, out, log, labels, val_rows, init)
    write_sidecar(out, settings["stage"], settings, t0, seed=settings["seed"], init=init, dropped_keys=dropped,
                  labels=labels, **stats)


def pretrain(pack: str, size: int, out: Output, log: Output, settings: dict, runtime: dict | None = None,
             init: str | None = None, threads: int = 1) -> None:
    """The self-supervised objective `settings["objective"]` on the first `size` rows of the pack,
    starting from `init`'s backbone if given (DDeP: its frozen encoder, objectives.ddep.encoder)."""
    packed = pack_length(pack)
    if size > packed:
        raise UserError(f"grid.pretrain_sizes: {size} is larger than the {packed} packed images in {pack}")
    _fit_stage(pack, np.arange(size), None, out, log, settings, runtime, init, threads)


def intermediate(pack: str, out: Output, log: Output, settings: dict, runtime: dict | None = None,
                 init: str | None = None, threads: int = 1) -> None:
    """Supervised classification on the intermediate dataset, starting from `init`'s backbone."""
    _fit_stage(pack, None, "labels", out, log, settings, runtime, init, threads)


def finetune(pets: str, rows: str, out: Output, log: Output, settings: dict, runtime: dict | None = None,
             init: str | None = None, labels: str | None = None, threads: int = 1, val: str | None = None) -> None:
    """Segmentation on the pets rows listed in `rows`, from `init` (or scratch): a fine-tune or a
    frozen probe (settings["stage"]), on the true trimaps or on the imperfect `labels` pack.
    `val`: a row-index file (splits/val.txt) scored after every epoch: val_loss, val_miou and
    val_pixel_acc in the log (sslseg.validate)."""
    _fit_stage(pets, read_rows(rows), "masks", out, log, settings, runtime, init, threads, labels,
               None if val is None else read_rows(val))


def probe(pets: str, rows: str, out: Output, log: Output, settings: dict, runtime: dict | None = None,
          init: str | None = None, labels: str | None = None, threads: int = 1, val: str | None = None) -> None:
    """A frozen probe: the fine-tune stage with the `probe:` recipe, whose settings freeze the
    backbone (sslseg.config.FROZEN); its own command so the DAG lists probes by name."""
    finetune(pets, rows, out, log, settings, runtime, init, labels, threads, val)
