"""Objectives: each a small nn.Module whose forward(batch) returns (loss, outputs)."""

from sslseg.objectives.classify import Classify, mixup
from sslseg.objectives.segment import Segment
from sslseg.objectives.simmim import SimMIM, random_mask

__all__ = ["SimMIM", "Segment", "Classify", "mixup", "random_mask"]
