"""Models: one network object built from a config (``build_model`` ->
``SegmentationNetwork``), the registry every family registers itself in
(``register_encoder`` / ``register_decoder``, with what the acceleration passes
may fuse), a file per family (``resnet``, ``resnext``, ``mobilenet``, ``hrnet``,
``decoders``, ``timm_encoder``: any timm backbone as ``timm:<name>``), weight loading (``weights``), model folders (``folder``) and the
original's ``ModelBuilder`` / ``SegmentationModule``."""
# the families register themselves when imported
# (timm_encoder registers the timm: names; timm itself is imported only when one is built)
from . import decoders, hrnet, mobilenet, resnet, resnext, timm_encoder  # noqa: F401
from .builder import ModelBuilder, SegmentationModule
from .network import SegmentationNetwork, build_model, network_from_archs, set_bn_momentum
from .registry import (DECODERS, ENCODERS, EncoderSpec, UnknownArchError, register_decoder,
                       register_encoder)
from .weights import WeightsError

__all__ = ["DECODERS", "ENCODERS", "EncoderSpec", "ModelBuilder", "SegmentationModule",
           "SegmentationNetwork", "UnknownArchError", "WeightsError", "build_model",
           "network_from_archs", "register_decoder", "register_encoder", "set_bn_momentum"]
