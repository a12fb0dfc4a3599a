"""The one model object: ``SegmentationNetwork`` (encoder + decoder -> class scores)
and ``build_model(cfg)``, the one place where ``cfg.MODEL`` becomes a network.

Training wraps the network's encoder and decoder with the loss
(``SegmentationModule``, the original's name and state-dict keys); inference,
export, model folders and the benchmark use the network itself. On disk a
network is two state dicts, ``encoder_*`` and ``decoder_*`` (the original's
two-file checkpoints), or a model folder (``save_pretrained`` /
``from_pretrained``, see :mod:`mit_semseg.models.folder`).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .folder import open_pretrained, save_pretrained
from .parts import (build_decoder, build_encoder, declared_channels, init_decoder_weights,
                    parts_from_config, set_bn_momentum)
from .weights import WeightsError

__all__ = ["SegmentationNetwork", "build_model", "network_from_archs", "build_encoder",
           "build_decoder", "set_bn_momentum", "init_decoder_weights"]


class SegmentationNetwork(nn.Module):
    """Encoder + decoder: a normalised image batch -> class scores.

    ``forward(img)`` returns class scores before the softmax at feature resolution
    (``[N, num_class, h, w]``, what the inference engine fuses and what export
    writes); ``forward(img, segSize=(H, W))`` returns class probabilities resized
    bilinearly to ``segSize`` (the original's inference output). ``encoder`` and
    ``decoder`` keep the original's module contracts and state-dict keys.
    ``config``: the config the network was built from (None when built by hand).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, config: Any = None) -> None:
        super().__init__()
        if not hasattr(decoder, "logits"):
            raise TypeError(f"{type(decoder).__name__} has no logits(conv_out) method; a "
                            f"segmentation network needs class scores before the softmax")
        self.encoder = encoder
        self.decoder = decoder
        self.config = config

    @property
    def num_class(self) -> int:
        return int(self.decoder.num_class)

    def features(self, img: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(img, return_feature_maps=True)

    def logits(self, img: torch.Tensor) -> torch.Tensor:
        """Class scores before the softmax at feature resolution."""
        return self.decoder.logits(self.features(img))

    def forward(self, img: torch.Tensor, segSize: Sequence[int] | None = None) -> torch.Tensor:
        scores = self.logits(img)
        if segSize is None:
            return scores
        scores = F.interpolate(scores, size=tuple(segSize), mode="bilinear",
                               align_corners=False)
        return F.softmax(scores, dim=1)

    # ------------------------------------------------------------------ weights
    def state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{"encoder": ..., "decoder": ...}``: the two state dicts of the original's
        checkpoint files (CPU tensors, detached)."""
        return {name: {k: v.detach().cpu() for k, v in getattr(self, name).state_dict().items()}
                for name in ("encoder", "decoder")}

    # ------------------------------------------------------------------ building
    @classmethod
    def from_config(cls, cfg: Any, weights: tuple[Any, Any] | None = None, *,
                    imagenet: bool = False, reinit_classifier: bool = False
                    ) -> "SegmentationNetwork":
        """The network ``cfg.MODEL`` and ``cfg.DATASET.num_class`` describe.

        ``weights``: (encoder, decoder), each a state dict or a file (strict loading);
        None or "" for one: that part starts fresh. A fresh encoder starts from ImageNet
        weights only when ``imagenet`` (training with ``MODEL.pretrained``; downloaded
        into ``MODEL.pretrained_dir``, ``MODEL.mirrors`` tried after the source), else
        from random init. ``reinit_classifier``: decoder weights of another class count
        load without their class layers (fine-tuning, ``MODEL.reinit_classifier``).
        BatchNorm momentum: ``MODEL.bn_momentum``; family settings:
        ``MODEL.encoder_options``.
        """
        encoder, decoder = parts_from_config(cfg, weights, imagenet=imagenet,
                                             reinit_classifier=reinit_classifier)
        return cls(encoder, decoder, config=cfg)

    @classmethod
    def from_pretrained(cls, model: str, **kwargs: Any) -> "SegmentationNetwork":
        """The network of a model folder or Hugging Face Hub repo id (see
        :func:`mit_semseg.models.folder.open_pretrained` for ``kwargs``)."""
        opened = open_pretrained(model, **kwargs)
        try:
            return cls.from_config(opened.cfg, (opened.encoder, opened.decoder))
        except WeightsError as exc:
            raise opened.mismatch(exc) from None

    def save_pretrained(self, folder: str, *, evaluation: Any = None,
                        name: str | None = None) -> str:
        """Write this network as a model folder (its config, weights, class table,
        preprocessing, model card); returns ``folder``. Needs ``config``."""
        if self.config is None:
            raise ValueError("save_pretrained needs the network's config: build it with "
                             "SegmentationNetwork.from_config / build_model")
        states = self.state_dicts()
        return save_pretrained(folder, self.config, encoder_weights=states["encoder"],
                               decoder_weights=states["decoder"], evaluation=evaluation,
                               name=name)


def build_model(cfg: Any, weights: tuple[Any, Any] | None = None, *, imagenet: bool = False,
                reinit_classifier: bool = False) -> SegmentationNetwork:
    """``SegmentationNetwork.from_config``: the one function from a config to a network."""
    return SegmentationNetwork.from_config(cfg, weights, imagenet=imagenet,
                                           reinit_classifier=reinit_classifier)


def network_from_archs(arch_encoder: str, arch_decoder: str, *, num_class: int, fc_dim: int,
                  weights: tuple[Any, Any] | None = None,
                  use_softmax: bool = False,
                  encoder_options: Mapping[str, Any] | None = None) -> SegmentationNetwork:
    """A network from architecture names (no config: the benchmark's pairs, tests).
    ``use_softmax``: the decoder's own ``forward`` returns probabilities (the
    original's inference modules). ``encoder_options``: as ``MODEL.encoder_options``."""
    enc_w, dec_w = weights if weights is not None else ("", "")
    encoder = build_encoder(arch_encoder, enc_w or "", options=encoder_options)
    decoder = build_decoder(arch_decoder, num_class=num_class, fc_dim=fc_dim, weights=dec_w or "",
                            in_channels=declared_channels(encoder),
                            use_softmax=use_softmax)
    return SegmentationNetwork(encoder, decoder)
