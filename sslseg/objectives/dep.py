"""DeP: denoising pretraining of encoder and UNet decoder together (seed 004, section 3).

Seed 004's scaled additive noise (eq. 5) and noise-prediction objective (eq. 6):

    x̃ = √γ·x + √(1−γ)·ε = (x + σε) / √(1+σ²),   ε ~ N(0, I),   γ = 1/(1+σ²)
    O(θ, φ | γ) = E_x E_ε ‖g_φ(f_θ(x̃)) − ε‖²

f_θ is the backbone, g_φ the UNet decoder (sslseg.models.unet) with 3 output channels; the
model predicts the noise ε, not the clean image (eq. 3 over eq. 2), and the scaling keeps x̃ at
unit variance for normalised x, whatever σ. Seed 004's best σ is 0.22 (γ ≈ 0.954); with
`gamma_range` [a, b], γ ~ U(a, b) per image instead (its Table 4 ablation, U(0.9, 0.95)). The
model is not conditioned on γ (section 4.4: it does not help). DDeP (ddep.py) is this objective
with the encoder frozen.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslseg.io import UserError
from sslseg.models import build_backbone
from sslseg.models.unet import build_decoder

PRETRAINING = True
NEEDS_MASK = False  # noise on pixels: any backbone
DECODER = True  # pretrains the UNet decoder: the pretraining depends on grid.decoder_widths


def build(settings: dict) -> DeP:
    """settings: "model" (with decoder_channels / decoder_width), "sigma", "gamma_range"."""
    return DeP(settings["model"], settings.get("sigma", 0.22), settings.get("gamma_range", []))


def draw_noise(shape: torch.Size, device: torch.device, gen: torch.Generator | None) -> torch.Tensor:
    """ε ~ N(0, I) of `shape`, drawn on `device` from `gen` (the loop's generator there:
    sslseg.train.make_generator), or from the device's global RNG without one."""
    return torch.randn(shape, device=device, generator=gen)


class DeP(nn.Module):
    name = "dep"  # the settings section its errors name

    def __init__(self, model: dict, sigma: float = 0.22, gamma_range: list[float] | tuple = ()):
        super().__init__()
        if len(gamma_range) not in (0, 2) or (gamma_range and not 0 < gamma_range[0] <= gamma_range[1] <= 1):
            raise UserError(f"objectives.{self.name}.gamma_range: {list(gamma_range)} is not [] or [a, b] with "
                            "0 < a <= b <= 1")
        if sigma <= 0:
            raise UserError(f"objectives.{self.name}.sigma: {sigma} must be positive")
        self.backbone = build_backbone(model)
        self.decoder = build_decoder(self.backbone, model, 3)
        self.gamma = 1.0 / (1.0 + sigma**2)  # eq. 5
        self.gamma_range = tuple(float(g) for g in gamma_range)

    def noise_levels(self, b: int, device: torch.device, u: torch.Tensor | None = None) -> torch.Tensor:
        """γ per image (B,): the fixed 1/(1+σ²), or U(a, b) when a range is set, from `u` (B,)
        uniform (`draw`'s "gamma_u")."""
        if not self.gamma_range:
            return torch.full((b,), self.gamma, device=device)
        lo, hi = self.gamma_range
        return lo + (hi - lo) * u

    def draw(self, batch: dict, gen: torch.Generator | None = None) -> dict:
        """The batch with the step's random inputs added, unless it has them: "gamma_u" (B,)
        uniform when γ has a range, then "noise" ε. Called by the loop before a compiled forward
        (sslseg.train.train_step; a draw taking a generator breaks its graph) and by the forward,
        so the draws are the same, in the same order."""
        if "noise" in batch:
            return batch
        x = batch["images"]
        out = dict(batch)
        if self.gamma_range:
            out["gamma_u"] = torch.rand(x.shape[0], generator=gen, device=x.device)
        out["noise"] = draw_noise(x.shape, x.device, gen)
        return out

    def forward(self, batch: dict, gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """batch["images"]: normalised (B, 3, H, W), with `draw`'s "gamma_u" and "noise" if drawn
        already. Returns MSE(pred, ε) (eq. 6) and {"pred": predicted noise, "noisy": x̃, "noise": ε,
        "denoised": the clean-image estimate (x̃ − √(1−γ)·pred)/√γ, "gamma": (B,)}, all
        (B, 3, H, W) but gamma."""
        batch = self.draw(batch, gen)
        x = batch["images"]
        gamma = self.noise_levels(x.shape[0], x.device, u=batch.get("gamma_u"))
        noise = batch["noise"].to(x.dtype)
        g = gamma.view(-1, 1, 1, 1).to(x.dtype)
        noisy = g.sqrt() * x + (1 - g).sqrt() * noise  # eq. 5
        pred = self.decoder.decode(self.backbone, noisy)
        loss = F.mse_loss(pred.float(), noise.float())  # eq. 6, averaged over pixels and channels
        denoised = (noisy - (1 - g).sqrt() * pred.detach()) / g.sqrt()
        return loss, {"pred": pred, "noisy": noisy, "noise": noise, "denoised": denoised, "gamma": gamma}
