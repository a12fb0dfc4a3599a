"""The original's module path ``mit_semseg.models.models`` (re-exports only):
the builder lives in :mod:`.builder`, the networks in a file per family."""
from mit_semseg.nn import SynchronizedBatchNorm2d

from . import hrnet, mobilenet, resnet, resnext  # noqa: F401 (the original's module attributes)
from ._layers import conv3x3_bn_relu  # noqa: F401
from .builder import (DECODERS, ENCODERS, ModelBuilder, SegmentationModule,  # noqa: F401
                      SegmentationModuleBase, set_bn_momentum)
from .decoders import C1, PPM, C1DeepSup, PPMDeepsup, UPerNet  # noqa: F401
from .mobilenet import MobileNetV2Dilated  # noqa: F401
from .resnet import Resnet, ResnetDilated  # noqa: F401

BatchNorm2d = SynchronizedBatchNorm2d  # the original's name
