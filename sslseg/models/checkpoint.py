"""The one checkpoint format, and strict loading.

A checkpoint is `{"model": state_dict, "meta": {...}}`. Loading a backbone from
another stage's checkpoint is strict: every backbone key must match. Keys of
the source stage's head (and SimMIM's mask token) are the only ones allowed to
be dropped, and they are reported, because a silently failed load would train
from scratch under a "pretrained" label.

A UNet decoder (`decoder.*`: DeP/DDeP's, the unet segmentation head's) carries over too
(`load_init`), strictly, except its final 1×1 conv `decoder.output.*`: that layer is
task-specific (3 noise channels of DeP vs the classes of a segmenter; equal in shape for
3 classes, but a noise predictor's weights are no start for class logits), so a fine-tune
always starts it fresh, whatever the class count, and it is reported as dropped.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from sslseg.io import UserError, save_torch
from sslseg.models.unet import OUTPUT

BACKBONE = "backbone."
DECODER = "decoder."  # the UNet decoder's name in every model that has one


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict) -> None:
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    save_torch(path, {"model": state, "meta": meta})


def read_checkpoint(path: str | Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: a folder, not a checkpoint; give the model.pt inside it") from None
    except PermissionError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror}); fix its permissions") from None
    except Exception as e:  # torch raises several types for truncated/corrupt files
        with open(path, "rb") as f:
            head = f.read(4)
        if not head.startswith((b"PK\x03\x04", b"\x80")):  # neither torch.save's zip nor its older pickle
            raise UserError(f"{path}: not a PyTorch checkpoint; give a model.pt a training stage wrote") from None
        raise UserError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}); if a stage of the workflow "
                        "wrote it, delete it and rerun that stage") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"{path}: not an sslseg checkpoint (no 'model' entry)")
    return ckpt


def is_checkpoint(path: str | Path) -> bool:
    """Whether `path` is an sslseg checkpoint ({"model": state dict with `backbone.*` keys}),
    rather than a plain weights file of another library (sslseg.models.weights)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable: read_checkpoint says so, naming the file
        return True
    return isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict) and \
        any(str(k).startswith(BACKBONE) for k in ckpt["model"])


def load_backbone(model: nn.Module, path: str | Path) -> list[str]:
    """Copy the `backbone.*` weights of checkpoint `path` into `model.backbone`, strictly.

    Returns the checkpoint keys that were dropped (the source's head); raises
    UserError naming the keys on any backbone mismatch.
    """
    return _load_backbone(model, read_checkpoint(path)["model"], path)


def _load_backbone(model: nn.Module, state: dict, path: str | Path) -> list[str]:
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


def load_init(model: nn.Module, path: str | Path, decoder: bool = True) -> list[str]:
    """What a stage takes from its init checkpoint `path`: the backbone, strictly (as
    `load_backbone`), and, with `decoder` and where both the model and the checkpoint have a
    UNet decoder, every `decoder.*` weight but the task-specific output conv `decoder.output.*`.

    Returns the checkpoint keys not loaded (its head, mask token, output conv; its decoder
    where the model has none or `decoder` is False). A decoder of another width or layout is a
    UserError: pretraining and fine-tune must use the same decoder settings.
    """
    state = read_checkpoint(path)["model"]
    dropped = set(_load_backbone(model, state, path))
    target = getattr(_unwrap(model), "decoder", None)
    skip = DECODER + OUTPUT
    source = {k[len(DECODER):]: v for k, v in state.items() if k.startswith(DECODER) and not k.startswith(skip)}
    if not (decoder and isinstance(target, nn.Module) and source):
        return sorted(dropped)
    own = {k: v for k, v in target.state_dict().items() if not k.startswith(OUTPUT)}
    if set(own) != set(source):
        missing, unexpected = sorted(set(own) - set(source)), sorted(set(source) - set(own))
        raise UserError(f"{path}: its decoder does not match this model's (missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}); pretraining and fine-tune must use the same model.decoder_channels")
    for k, v in own.items():
        if v.shape != source[k].shape:
            raise UserError(f"{path}: decoder.{k} has shape {tuple(source[k].shape)}, model expects {tuple(v.shape)}; "
                            "pretrain and fine-tune the decoder at the same grid.decoder_widths")
    target.load_state_dict(source, strict=False)  # strict on everything but the output conv (checked above)
    return sorted(dropped - {DECODER + k for k in source})


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
