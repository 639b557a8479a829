"""MAE (seed 003; He et al. 2022, facebookresearch/mae models_mae.py): hide most patches, encode
only the visible ones, a light decoder predicts the hidden patches' pixels, MSE on those.

The encoder is `self.backbone`, the grid's ViT unchanged (its learned position embedding, timm's
init), so its weights carry into the fine-tune exactly as SimMIM's do; the fine-tune runs the
whole image through it (mask ratio 0, as seed 003 does). Everything else (decoder, mask token)
is dropped there. Differences from models_mae.py: the backbone's own position embedding and
init instead of MAE's frozen sin-cos encoder embedding (every objective pretrains the same
backbone), and round((1 - ratio)·N) kept patches instead of int(), which floats can floor one
short (int(10 * (1 - 0.9)) = 0).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from sslseg.io import UserError
from sslseg.models import build_backbone
from sslseg.models.vit import PRESETS as VIT_PRESETS
from sslseg.models.vit import patchify, unpatchify

PRETRAINING = True
NEEDS_MASK = True  # drops patch tokens: only ViTs (`accepts_mask`) can

# "mae": the paper's decoder (models_mae.py mae_vit_*_dec512d8b; seed 003's Table 1).
# "small": for ViNy. Next to ViT-L/B, 512-d x 8 is light (under 10% of the encoder's FLOPs per
# token, paper Sec. 3); next to ViNy (128-d, 4.8M parameters) it is ~25M parameters run on all N
# tokens, i.e. most of the pretraining compute. The paper's ablation (Table 1a, b) finds
# fine-tuning accuracy nearly flat in decoder depth (1 block within 0.1 of 8) and width (128 as
# good as 512); only linear probing wants the deep, wide one. So: ViNy's own width, 2 blocks.
DECODERS: dict[str, dict] = {
    "mae": dict(dim=512, depth=8, heads=16, mlp_ratio=4.0),
    "small": dict(dim=128, depth=2, heads=4, mlp_ratio=4.0),
}
EPS = 1e-6  # models_mae.py forward_loss: (var + 1e-6) ** 0.5


def build(settings: dict) -> MAE:
    """settings: "model", "mask_ratio", "decoder" (a DECODERS name), optional "decoder_dim",
    "decoder_depth", "decoder_heads", "decoder_mlp_ratio" (None = the preset's), "norm_pix_loss"."""
    return MAE(settings["model"], settings["mask_ratio"], decoder_settings(settings),
               settings.get("norm_pix_loss", True))


def decoder_settings(settings: dict) -> dict:
    """The decoder preset with the overrides that are set; one-line errors for bad ones."""
    name = settings["decoder"]
    if name not in DECODERS:
        raise UserError(f"objectives.mae.decoder: unknown preset {name!r}; available: {', '.join(DECODERS)}")
    d = {**DECODERS[name], **{k: settings[f"decoder_{k}"] for k in DECODERS[name]
                              if settings.get(f"decoder_{k}") is not None}}
    if d["dim"] % 4:
        raise UserError(f"objectives.mae.decoder_dim: {d['dim']} is not a multiple of 4, which the 2-D sin-cos "
                        "position embedding needs; pick e.g. 128 or 512")
    if d["dim"] % d["heads"]:
        raise UserError(f"objectives.mae.decoder_heads: {d['heads']} heads do not divide decoder_dim "
                        f"{d['dim']}; pick a divisor of {d['dim']}")
    return d


def random_masking(noise: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """MAE's per-sample random masking: keep the round((1 - ratio)·N) patches with the smallest
    `noise` (B, N) uniform (`MAE.draw`'s, drawn on the batch's device). Returns mask (B, N) bool
    (True = removed) and ids_restore (B, N): the position of each patch in the shuffled order
    (visible first)."""
    keep = int(round((1 - ratio) * noise.shape[1]))
    ids_restore = noise.argsort(dim=1).argsort(dim=1)
    return ids_restore >= keep, ids_restore


def masking_of(mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """ids_restore of a given mask (B, N) bool (its visible patches first, in order) and the
    number kept, which must be the same in every sample (the encoder's batch is rectangular)."""
    hidden = mask.sum(dim=1)
    if (hidden != hidden[0]).any():
        raise ValueError(f"mae: a given mask must hide as many patches in every sample, not {hidden.tolist()}")
    return mask.to(torch.uint8).argsort(dim=1, stable=True).argsort(dim=1), mask.shape[1] - int(hidden[0])


def sincos_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """(1, 1 + h·w, dim): models_mae.py's fixed 2-D sin-cos embedding (util/pos_embed.py), a zero
    row for the class token; first half encodes the column, second half the row."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    halves = [torch.outer(pos.flatten(), omega) for pos in (cols, rows)]
    emb = torch.cat([torch.cat([a.sin(), a.cos()], dim=1) for a in halves], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb]).float()[None]


def patch_stats(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch mean and std (unbiased var + EPS) of (B, N, P): MAE's norm_pix_loss target."""
    return patches.mean(-1, keepdim=True), (patches.var(-1, keepdim=True) + EPS).sqrt()


def mae_loss(images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch_size: int,
             norm_pix_loss: bool = True) -> torch.Tensor:
    """models_mae.py forward_loss. images (B, 3, H, W); pred (B, N, p·p·3) in patchify's
    (ph, pw, c) order; mask (B, N) bool. MSE per patch, averaged over the removed patches only,
    so predictions for visible patches carry no loss."""
    target = patchify(images, patch_size).float()
    if norm_pix_loss:
        mean, std = patch_stats(target)
        target = (target - mean) / std
    err = (pred.float() - target).pow(2).mean(-1)
    m = mask.to(err.dtype)
    return (err * m).sum() / m.sum().clamp(min=1)  # clamp: ratio 0 gives 0, not NaN


class MAE(nn.Module):
    def __init__(self, model: dict, mask_ratio: float, decoder: dict, norm_pix_loss: bool = True):
        super().__init__()
        self.backbone = build_backbone(model)
        if not self.backbone.accepts_mask:
            raise UserError(f"grid.backbones: mae drops patches, which {model['backbone']} cannot; "
                            f"pair it with a ViT ({', '.join(VIT_PRESETS)})")
        self.patch_size, self.mask_ratio, self.norm_pix_loss = self.backbone.reduction, mask_ratio, norm_pix_loss
        self.grid = (model["image_size"] // self.patch_size,) * 2
        dim = decoder["dim"]
        self.decoder_embed = nn.Linear(self.backbone.num_features, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        # fixed, not learned (MAE freezes it); not persistent: it follows from the settings
        self.register_buffer("decoder_pos_embed", sincos_2d(dim, *self.grid), persistent=False)
        self.decoder_blocks = nn.Sequential(*[
            Block(dim, decoder["heads"], decoder["mlp_ratio"], qkv_bias=True,
                  norm_layer=partial(nn.LayerNorm, eps=1e-6)) for _ in range(decoder["depth"])])
        self.decoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dim, self.patch_size**2 * 3)
        # MAE's init for what is MAE's own; the backbone keeps timm's, as under every objective
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            m.apply(_init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (B, 1 + K, D) from the encoder → predicted patches (B, N, p·p·3)."""
        x = self.decoder_embed(latent)
        b, n = ids_restore.shape
        hidden = self.mask_token.to(x.dtype).expand(b, n - (x.shape[1] - 1), -1)
        patches = torch.cat([x[:, 1:], hidden], dim=1)  # shuffled order: visible first
        patches = patches.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # unshuffle
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        return self.decoder_pred(self.decoder_norm(self.decoder_blocks(x)))[:, 1:]

    def draw(self, batch: dict, gen: torch.Generator | None = None) -> dict:
        """The batch with the step's random input added ("mask_noise"), unless it has it or a
        "mask": called by the loop before a compiled forward (sslseg.train.train_step; a draw
        taking a generator breaks its graph) and by the forward, so the draws are the same."""
        if "mask" in batch or "mask_noise" in batch:
            return batch
        images = batch["images"]
        noise = torch.rand(images.shape[0], self.grid[0] * self.grid[1], generator=gen, device=images.device)
        return {**batch, "mask_noise": noise}

    def forward(self, batch: dict, gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """batch["images"]: normalised (B, 3, H, W); optional batch["mask"] (B, N) bool, the same
        count in every sample, or batch["mask_noise"] (B, N) from `draw`. Returns the
        masked-patch MSE, and {"pred": (B, 3, H, W) in the normalised image space (per-patch un-normalised with the true patch's mean and std
        under norm_pix_loss, as MAE's visualisation does), "mask": (B, N) bool}."""
        batch = self.draw(batch, gen)
        images = batch["images"]
        mask = batch.get("mask")
        if mask is None:
            mask, ids_restore = random_masking(batch["mask_noise"], self.mask_ratio)
            keep = int(round((1 - self.mask_ratio) * mask.shape[1]))
        else:
            ids_restore, keep = masking_of(mask)
        ids_keep = ids_restore.argsort(dim=1)[:, :keep]
        pred = self.forward_decoder(self.backbone.forward_visible(images, ids_keep), ids_restore)
        loss = mae_loss(images, pred, mask, self.patch_size, self.norm_pix_loss)
        with torch.no_grad():  # for figures only: no graph kept
            pixels = pred.detach().float()
            if self.norm_pix_loss:
                mean, std = patch_stats(patchify(images, self.patch_size).float())
                pixels = pixels * std + mean
        return loss, {"pred": unpatchify(pixels, self.patch_size, 3, self.grid), "mask": mask}


def _init_weights(m: nn.Module) -> None:
    """models_mae.py _init_weights: xavier-uniform Linear (as the JAX ViT), zero bias; unit LayerNorm."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
