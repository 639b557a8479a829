"""`python -m sslseg evaluate_folder`: score any fine-tune checkpoint on any Oxford-layout folder."""

from __future__ import annotations

import json
import sys

import torch

from sslseg.config import eval_settings, load_config
from sslseg.data import sources
from sslseg.data.pack import load_arrays
from sslseg.io import Output, write_json
from sslseg.models.predict import load_for_eval
from sslseg.stages.evaluate import score_segmenter


def evaluate_folder(ckpt: str, root: str, out: Output | None = None, config: str = "config.yaml",
                    configfile: str | None = None, threads: int = 1) -> dict:
    """Score a fine-tune on every image of an Oxford-layout folder (decoded in memory, no pack).
    The model settings come from the checkpoint; device and batch size from the config."""
    torch.set_num_threads(threads)
    cfg = load_config(config, configfile)
    # device, batch size and AMP from the config; the model (any backbone here) from the checkpoint
    model, settings = load_for_eval(ckpt, eval_settings(cfg, cfg["grid"]["backbones"][0]))
    m = settings["model"]
    print(f"{ckpt}: {settings['trained_by']} checkpoint, {m['backbone']} at {m['image_size']} px", file=sys.stderr)
    records = sources.oxford_pets(root)
    arrays = load_arrays(records, m["image_size"], "squash", threads)
    result = {**score_segmenter((model, settings), arrays), "images": len(records), "checkpoint": str(ckpt),
              "model": m}
    print(json.dumps(result, indent=2))
    if out:
        write_json(out, result)
    return result
