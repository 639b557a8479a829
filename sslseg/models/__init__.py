"""Models: backbones by name (`sslseg.models.backbones`) and heads on their NCHW maps.
`build_backbone` is the one place that maps the `model` config section to modules."""

from sslseg.models.backbones import BACKBONES, Backbone, build_backbone, count_parameters
from sslseg.models.heads import ClassifierHead, PixelHead

__all__ = ["BACKBONES", "Backbone", "ClassifierHead", "PixelHead", "build_backbone", "count_parameters"]
