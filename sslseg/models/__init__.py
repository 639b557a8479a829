"""Models: backbones by preset name and heads. `build_backbone` is the one place that
maps the `model` config section to modules."""

from sslseg.models.heads import ClassifierHead, PixelHead
from sslseg.models.vit import PRESETS, build_backbone, count_parameters, encode

__all__ = ["PRESETS", "ClassifierHead", "PixelHead", "build_backbone", "count_parameters", "encode"]
