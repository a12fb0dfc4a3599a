"""Models: one network object built from a config (``build_model`` ->
``SegmentationNetwork``), the registry every family registers itself in
(``register_encoder`` / ``register_decoder``, with what the acceleration passes
may fuse), a file per family (``resnet``, ``resnext``, ``mobilenet``, ``hrnet``,
``segformer``, ``dinov2``, ``timm_encoder``: any timm backbone as ``timm:<name>``;
timm is imported only when one is built), ``decoders``), weight loading
(``weights``), model folders (``folder``) and the original's
``ModelBuilder`` / ``SegmentationModule``."""
# the families register themselves when imported
from . import decoders, dinov2, hrnet, mobilenet, resnet, resnext, segformer, timm_encoder  # noqa: F401
from .builder import ModelBuilder, SegmentationModule
from .network import SegmentationNetwork, build_model, network_from_archs, set_bn_momentum
from .registry import (DECODERS, ENCODERS, EncoderSpec, UnknownArchError, register_decoder,
                       register_encoder)
from .weights import WeightsError

__all__ = ["DECODERS", "ENCODERS", "EncoderSpec", "ModelBuilder", "SegmentationModule",
           "SegmentationNetwork", "UnknownArchError", "WeightsError", "build_model",
           "network_from_archs", "register_decoder", "register_encoder", "set_bn_momentum"]
