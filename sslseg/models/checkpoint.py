"""The one checkpoint format, and strict loading.

A checkpoint is `{"model": state_dict, "meta": {...}}`. Loading a backbone from
another stage's checkpoint is strict: every backbone key must match. Keys of
the source stage's head (and SimMIM's mask token) are the only ones allowed to
be dropped, and they are reported, because a silently failed load would train
from scratch under a "pretrained" label.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from sslseg.io import UserError, save_torch

BACKBONE = "backbone."


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict) -> None:
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    save_torch(path, {"model": state, "meta": meta})


def read_checkpoint(path: str | Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found") from None
    except Exception as e:  # torch raises several types for truncated/corrupt files
        raise UserError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}); delete it and rerun its stage") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"{path}: not an sslseg checkpoint (no 'model' entry)")
    return ckpt


def load_backbone(model: nn.Module, path: str | Path) -> list[str]:
    """Copy the `backbone.*` weights of checkpoint `path` into `model.backbone`, strictly.

    Returns the checkpoint keys that were dropped (the source's head); raises
    UserError naming the keys on any backbone mismatch.
    """
    state = read_checkpoint(path)["model"]
    backbone = {k[len(BACKBONE):]: v for k, v in state.items() if k.startswith(BACKBONE)}
    dropped = sorted(k for k in state if not k.startswith(BACKBONE))
    if not backbone:
        raise UserError(f"{path}: checkpoint has no backbone weights; was it written by sslseg?")
    target = _unwrap(model).backbone
    missing = sorted(set(target.state_dict()) - set(backbone))
    unexpected = sorted(set(backbone) - set(target.state_dict()))
    if missing or unexpected:
        raise UserError(
            f"{path}: backbone does not match grid.backbones (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "pretrain and fine-tune must use the same model settings"
        )
    for k, v in target.state_dict().items():
        if v.shape != backbone[k].shape:
            raise UserError(f"{path}: {k} has shape {tuple(backbone[k].shape)}, model expects {tuple(v.shape)}; "
                            "check model.image_size / patch_size")
    target.load_state_dict(backbone, strict=True)
    return dropped


def load_model(model: nn.Module, path: str | Path, ckpt: dict | None = None) -> dict:
    """Load a whole model (backbone and head) strictly from `path` (or its already read
    contents `ckpt`); returns the checkpoint's meta."""
    ckpt = ckpt if ckpt is not None else read_checkpoint(path)
    try:
        _unwrap(model).load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UserError(f"{path}: checkpoint does not fit this model ({first})") from None
    return ckpt.get("meta", {})


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)  # torch.compile wraps the module
