"""The original's model API: ``ModelBuilder`` (encoders and decoders by name) and
the trainable ``SegmentationModule`` (encoder + decoder + loss).

Names are looked up in the registry (:mod:`mit_semseg.models.registry`), where
every family registers itself; names are case-insensitive. Weights files are
loaded strictly (see ``weights.py``). New code builds a whole network from a
config with :func:`mit_semseg.models.build_model`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .parts import build_decoder, build_encoder, init_decoder_weights, set_bn_momentum
from .registry import DECODERS, ENCODERS
from .weights import DEFAULT_PRETRAINED_DIR

__all__ = ["ENCODERS", "DECODERS", "ModelBuilder", "SegmentationModuleBase",
           "SegmentationModule", "set_bn_momentum"]


class ModelBuilder:
    """Builds encoders and decoders by name (the original's API)."""

    weights_init = staticmethod(init_decoder_weights)

    @staticmethod
    def build_encoder(arch: str = "resnet50dilated", fc_dim: int = 512, weights: str = "",
                      pretrained: bool = True, model_dir: str = DEFAULT_PRETRAINED_DIR,
                      bn_momentum: float | None = None) -> nn.Module:
        """Build encoder ``arch``.

        ``weights``: a state-dict file to load (strictly). Empty: start from
        ImageNet weights (downloaded once into ``model_dir``) when
        ``pretrained``, else from random init. ``fc_dim`` is accepted for the
        original's signature; the architecture fixes its channels.
        """
        return build_encoder(arch, weights, imagenet=pretrained, model_dir=model_dir,
                             bn_momentum=bn_momentum)

    @staticmethod
    def build_decoder(arch: str = "ppm_deepsup", fc_dim: int = 512, num_class: int = 150,
                      weights: str = "", use_softmax: bool = False,
                      reinit_classifier: bool = False,
                      bn_momentum: float | None = None) -> nn.Module:
        """Build decoder ``arch`` for ``num_class`` classes on ``fc_dim`` channels.

        ``weights``: a state-dict file, loaded strictly. A class-count mismatch
        is an error unless ``reinit_classifier``: then the class layers keep
        their fresh init and every other key is still loaded strictly.
        """
        return build_decoder(arch, num_class=num_class, fc_dim=fc_dim, weights=weights,
                             use_softmax=use_softmax, reinit_classifier=reinit_classifier,
                             bn_momentum=bn_momentum)


class SegmentationModuleBase(nn.Module):
    @staticmethod
    def pixel_acc(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Share of labeled pixels (label >= 0) whose argmax matches."""
        valid = label >= 0
        correct = (pred.argmax(dim=1) == label) & valid
        return correct.sum().float() / (valid.sum().float() + 1e-10)


class SegmentationModule(SegmentationModuleBase):
    """Encoder + decoder + loss.

    ``forward(feed_dict, segSize=None)``: without ``segSize`` returns
    ``(loss, acc)`` for ``feed_dict['img_data']`` / ``feed_dict['seg_label']``
    (with deep supervision ``loss = main + deep_sup_scale * aux``); with
    ``segSize`` returns the decoder's scores at that size. A list holding one
    such dict (a loader batch made with ``user_scattered_collate``, as the
    original train.py passes it on a single device) is taken as that dict.
    """

    def __init__(self, net_enc: nn.Module, net_dec: nn.Module, crit: nn.Module,
                 deep_sup_scale: float | None = None) -> None:
        super().__init__()
        self.encoder = net_enc
        self.decoder = net_dec
        self.crit = crit
        self.deep_sup_scale = deep_sup_scale

    @classmethod
    def from_network(cls, network: nn.Module, crit: nn.Module,
                     deep_sup_scale: float | None = None) -> "SegmentationModule":
        """The training module of a ``SegmentationNetwork`` (same encoder and decoder
        objects, so the same parameters and state-dict keys)."""
        return cls(network.encoder, network.decoder, crit, deep_sup_scale)

    def features(self, feed_dict: dict) -> list[torch.Tensor]:
        """The encoder's feature maps of ``feed_dict['img_data']`` (a subclass may take
        them from elsewhere, e.g. a cache of a frozen encoder's)."""
        return self.encoder(feed_dict["img_data"], return_feature_maps=True)

    def forward(self, feed_dict: dict, *, segSize=None):
        if isinstance(feed_dict, (list, tuple)) and len(feed_dict) == 1:
            feed_dict = feed_dict[0]
        features = self.features(feed_dict)
        if segSize is not None:
            return self.decoder(features, segSize=segSize)
        label = feed_dict["seg_label"]
        if self.deep_sup_scale is not None:
            pred, pred_deepsup = self.decoder(features)
            loss = self.crit(pred, label) + self.deep_sup_scale * self.crit(pred_deepsup, label)
        else:
            pred = self.decoder(features)
            loss = self.crit(pred, label)
        return loss, self.pixel_acc(pred, label)
