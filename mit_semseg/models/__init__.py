"""Models: ``ModelBuilder`` (lookup by name), ``SegmentationModule``, a file per
encoder family (``resnet``, ``resnext``, ``mobilenet``, ``hrnet``), the
decoders, weight loading (``weights``) and what each family declares fusable
for :mod:`mit_semseg.accel` (``fusable``)."""
from .builder import DECODERS, ENCODERS, ModelBuilder, SegmentationModule, set_bn_momentum
from .weights import WeightsError

__all__ = ["DECODERS", "ENCODERS", "ModelBuilder", "SegmentationModule", "WeightsError",
           "set_bn_momentum"]
