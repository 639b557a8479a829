"""DDeP: decoder denoising pretraining (seed 004, section 4): DeP's objective with the encoder frozen.

    O(φ | θ, γ) = E_x E_ε ‖g_φ(f_θ(√γ·x + √(1−γ)·ε)) − ε‖²   (eq. 6; θ fixed, only φ trains)

θ comes from another stage's checkpoint (`objectives.ddep.encoder`, resolved by the workflow
and passed as the stage's `--init`: a SimMIM/MAE encoder, an intermediate classifier, ...);
φ, the UNet decoder, starts from random init as in the paper, even when that checkpoint has a
decoder of its own (a DeP one): only its backbone is loaded, so a DDeP result depends on its
encoder alone. The encoder is frozen twice over: `FREEZE` goes into the stage's freeze list (no
gradient, no optimizer state, weights bit-identical), and the module itself stops its gradient
and keeps it in eval mode, so BatchNorm statistics (ResNet) and dropout leave it as loaded
whatever the stage's settings say.
"""

from __future__ import annotations

from sslseg.objectives.dep import DeP

PRETRAINING = True
NEEDS_MASK = False
DECODER = True  # pretrains the UNet decoder: the pretraining depends on grid.decoder_widths
FREEZE = ["backbone."]  # parameter-name prefixes never trained (sslseg.optim.freeze)
INIT = "encoder"  # the settings key naming the checkpoint the stage starts from (its --init)


def build(settings: dict) -> DDeP:
    """settings: "model" (with decoder_channels / decoder_width), "sigma", "gamma_range"
    ("encoder" is the workflow's: it becomes the stage's init checkpoint)."""
    return DDeP(settings["model"], settings.get("sigma", 0.22), settings.get("gamma_range", []))


class DDeP(DeP):
    name = "ddep"
    needs_init = "objectives.ddep.encoder"  # sslseg.stages.train refuses to run it without an init
    init_decoder = False  # load only the init's backbone: the decoder starts from random init

    def __init__(self, model: dict, sigma: float = 0.22, gamma_range: list[float] | tuple = ()):
        super().__init__(model, sigma, gamma_range)
        self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> DDeP:
        """Train mode for the decoder only: the frozen encoder stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self
