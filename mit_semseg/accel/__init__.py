"""Passes that make a model fast without changing what it computes (beyond
float rounding): BatchNorm folding (``fold``), fused convolutions
(``fused``), Winograd 3x3 convolutions (``winograd``), the fast dilated
depthwise backward (``depthwise``), reduced precision and the inference copy
that combines them (``inference``), and the default training step's changes
(``training``).

Used by :mod:`mit_semseg.inference` and :mod:`mit_semseg.training`; they
learn what a model family can fuse from :mod:`mit_semseg.models.fusable`.
"""
from .fold import fold_conv_bn, fuse_bn
from .fused import (FusedConv2d, FusedResidual, fused_conv_exact, mkldnn_bf16_available,
                    mkldnn_fusion_available)
from .inference import (KeepFloat32, factorize_pyramids_, optimize_for_inference,
                        precision_dtype, prepare_input)
from .training import channels_last_, fast_training_

__all__ = ["fold_conv_bn", "fuse_bn", "FusedConv2d", "FusedResidual", "fused_conv_exact",
           "mkldnn_bf16_available", "mkldnn_fusion_available", "KeepFloat32",
           "factorize_pyramids_", "optimize_for_inference", "precision_dtype", "prepare_input",
           "channels_last_", "fast_training_"]
