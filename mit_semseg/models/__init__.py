"""Models: ``ModelBuilder``, ``SegmentationModule`` and the arch registries."""
from .models import DECODERS, ENCODERS, ModelBuilder, SegmentationModule, set_bn_momentum
from .weights import WeightsError

__all__ = ["DECODERS", "ENCODERS", "ModelBuilder", "SegmentationModule", "WeightsError",
           "set_bn_momentum"]
