"""Backbone weights from a local file in the formats users have: torchvision's and timm's
state dicts (e.g. torchvision's `resnet50-0676ba61.pth`), optionally nested under "state_dict"
or "model" (MAE's, DINO's and Lightning's checkpoints), or an sslseg checkpoint.

Nothing here downloads: a missing file is a one-line error naming the config key. Loading is
strict on the backbone, so a file of another architecture fails loudly instead of leaving
random weights under a "pretrained" label; only the classifier (timm/torchvision `fc.`,
`head.`, `classifier.`) may be left out, and it is reported.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from sslseg.io import UserError

CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.")  # the classifier a backbone does not have
NESTED = ("state_dict", "model", "module")  # where training frameworks nest the weights


def read_state_dict(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unnested; `key` names the config key in errors."""
    if not Path(path).is_file():
        raise UserError(f"{key}: {path} is not a file (nothing is downloaded at run time); put the weights "
                        "file there, or remove the key")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise UserError(f"{key}: {path} is not a readable torch weights file ({type(e).__name__}); "
                        "give a state dict saved with torch.save") from None
    for name in NESTED:
        if isinstance(state, dict) and isinstance(state.get(name), dict):
            state = state[name]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{key}: {path} holds no state dict of tensors; give a model's state_dict()")
    if any(k.startswith("backbone.") for k in state):  # an sslseg checkpoint
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel's prefix


def load_weights(backbone: nn.Module, path: str | Path, key: str) -> list[str]:
    """Load the weights file `path` into `backbone` strictly; returns the classifier keys of
    the file that were left out. Raises UserError naming `key` on any other mismatch."""
    state = read_state_dict(path, key)
    dropped = sorted(k for k in state if k.startswith(CLASSIFIER_PREFIXES) and k not in backbone.state_dict())
    state = {k: v for k, v in state.items() if k not in dropped}
    own = backbone.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise UserError(f"{key}: {path} does not fit backbone {type(backbone).__name__} (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}); give weights of the same architecture")
    for k, v in own.items():
        if v.shape != state[k].shape:
            raise UserError(f"{key}: {path}: {k} has shape {tuple(state[k].shape)}, the backbone expects "
                            f"{tuple(v.shape)}; give weights of the same architecture and model.image_size")
    backbone.load_state_dict(state, strict=True)
    return dropped
