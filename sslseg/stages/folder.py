"""Tools for users, not rules: `python -m sslseg evaluate_folder` scores any fine-tune checkpoint on
any Oxford-layout folder; `predict_masks` writes its predicted masks as PNGs anyone can check."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sslseg.config import eval_settings, load_config
from sslseg.data import sources
from sslseg.data.pack import BLOCK, load_arrays
from sslseg.io import Output, UserError, atomic_path, write_json
from sslseg.metrics import TRIMAP_CLASSES
from sslseg.models.predict import load_for_eval, predict_classes
from sslseg.stages.evaluate import score_segmenter

OVERLAY_ALPHA = 0.5  # weight of the class colour over the image in `<name>_overlay.png`


def _load(ckpt: str, config: str, configfile: str | None, threads: int) -> tuple[torch.nn.Module, dict, str]:
    """The segmenter in `ckpt`, built with the settings it records; device, batch size and AMP
    from the config, and how a photo becomes the model's square: as its training pets were
    (recorded in the checkpoint; for an older checkpoint, the config's data.pets.resize)."""
    torch.set_num_threads(threads)
    cfg = load_config(config, configfile)
    model, settings = load_for_eval(ckpt, eval_settings(cfg, cfg["grid"]["backbones"][0]))
    m = settings["model"]
    print(f"{ckpt}: {settings['trained_by']} checkpoint, {m['backbone']} at {m['image_size']} px", file=sys.stderr)
    resize = settings.get("input_resize") or cfg["data"]["pets"]["resize"]  # what it was trained on
    return model, settings, resize


def evaluate_folder(ckpt: str, root: str, out: Output | None = None, config: str = "config.yaml",
                    configfile: str | None = None, threads: int = 1) -> dict:
    """Score a fine-tune on every image of an Oxford-layout folder (decoded in memory, no pack).
    The model settings come from the checkpoint; device and batch size from the config."""
    model, settings, resize = _load(ckpt, config, configfile, threads)
    m = settings["model"]
    records = sources.oxford_pets(root, key="--root")
    arrays = load_arrays(records, m["image_size"], resize, threads)
    result = {**score_segmenter((model, settings), arrays), "images": len(records), "checkpoint": str(ckpt),
              "model": m}
    print(json.dumps(result, indent=2))
    if out:
        write_json(out, result)
    return result


def folder_records(root: str, out: str | None = None) -> list[sources.Record]:
    """An Oxford-IIIT Pet root (its list files name the images) or, failing that, every image
    below `root`, e.g. a user's own photos. `out`: where their PNGs go, refused inside such a
    folder of images (a second run would read the first one's masks as photos)."""
    base = Path(root)
    if any((b / "annotations" / "trainval.txt").exists() for b in (base, base / "oxford-iiit-pet")):
        records = sources.oxford_pets(root, key="--root")
    else:
        if out is not None and Path(out).resolve().is_relative_to(base.resolve()):
            raise UserError(f"{out}: inside the image folder {root}, so a later run would take these masks for "
                            "images; choose an output folder outside it")
        records = sources.image_folder(root, hint="check --root")
        other = Counter(p.suffix.lower() or "(no suffix)" for p in base.rglob("*")
                        if p.suffix.lower() not in sources.IMAGE_SUFFIXES and not p.name.startswith(".")
                        and not sources.junk_folder(p.relative_to(base).parts[:-1]) and p.is_file())
        if other:  # e.g. .tif or .gif: say so rather than leave them out without a word
            kinds = ", ".join(f"{n} {suffix}" for suffix, n in sorted(other.items()))
            print(f"sslseg: not read (not {', '.join(sorted(sources.IMAGE_SUFFIXES))}): {kinds}", file=sys.stderr)
        # an image's relative path without its suffix names its PNGs: `a.jpg` and `a.png` would share them
        records = [sources.Record(str(Path(r.name).with_suffix("")), r.image) for r in records]
    stems = [r.name for r in records]
    if len(set(stems)) < len(stems):
        twin = next(s for s in stems if stems.count(s) > 1)
        raise UserError(f"{root}: two images named {twin!r} (different suffixes) would write the same masks; "
                        "rename one")
    clash = sorted(set(stems) & {f"{s}_overlay" for s in stems})
    if clash:  # `a_overlay.png` would be both a's overlay and a_overlay's mask
        raise UserError(f"{root}: images {clash[0].removesuffix('_overlay')!r} and {clash[0]!r} would both write "
                        f"{clash[0]}.png (a mask and an overlay); rename one")
    return records


def overlay(image: np.ndarray, classes: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """uint8 (S, S, 3) image with each pixel's class colour blended in at OVERLAY_ALPHA."""
    blend = (1 - OVERLAY_ALPHA) * image + OVERLAY_ALPHA * colours[classes].astype(np.float64)
    return blend.round().astype(np.uint8)


def predict_masks(ckpt: str, root: str, out: Output, config: str = "config.yaml", configfile: str | None = None,
                  threads: int = 1) -> Path:
    """Write a fine-tune's predicted masks for every image of a folder as PNGs in `out`.

    `root` is an Oxford-layout folder or any folder of images. Per image: `<name>.png`, one
    uint8 channel of class indices (0 pet, 1 background, 2 border), and `<name>_overlay.png`,
    the input with the classes coloured; `classes.json` names each index, its colour and the
    resize used. Masks are at the model's input geometry, as evaluation sees it: made square as
    the checkpoint's training pets were (data.pets.resize; crop: shorter side to image_size,
    centre square; squash: the whole image to a square); to score them, resize the trimaps the
    same way (nearest).
    """
    from sslseg.report.figures import TRIMAP_COLOURS  # the example figures' colours (lazy: matplotlib)

    if Path(out).exists() and not Path(out).is_dir():  # before any work, like the CLI's writability check
        raise UserError(f"{out}: is a file, not a folder; choose another output folder")
    records = folder_records(root, out)
    model, settings, resize = _load(ckpt, config, configfile, threads)
    size = settings["model"]["image_size"]
    for start in range(0, len(records), BLOCK):  # bounded memory for a folder of any size
        block = records[start:start + BLOCK]
        images = load_arrays(block, size, resize, threads)["images"]
        pred = predict_classes(model, images, settings).numpy().astype(np.uint8)
        for rec, image, classes in zip(block, images, pred):
            for suffix, array in (("", classes), ("_overlay", overlay(image, classes, TRIMAP_COLOURS))):
                with atomic_path(Path(out) / f"{rec.name}{suffix}.png") as tmp:
                    Image.fromarray(array).save(tmp, format="PNG")
    legend = [{"index": i, "name": n, "colour": TRIMAP_COLOURS[i].tolist()} for i, n in enumerate(TRIMAP_CLASSES)]
    write_json(Path(out) / "classes.json", {
        "classes": legend,
        "image_size": size, "resize": resize, "overlay_alpha": OVERLAY_ALPHA, "images": len(records),
        "checkpoint": str(ckpt), "model": settings["model"]})
    print(f"{out}: {len(records)} masks and overlays ({size}x{size} px)", file=sys.stderr)
    return Path(out)
