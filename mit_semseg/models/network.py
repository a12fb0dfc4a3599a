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

import sys
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import EncoderSpec, decoder_factory, encoder_factory
from .weights import DEFAULT_PRETRAINED_DIR, WeightsError, load_weights, read_state_dict

__all__ = ["SegmentationNetwork", "build_model", "network_from_archs", "build_encoder",
           "build_decoder", "set_bn_momentum", "init_decoder_weights"]


def set_bn_momentum(module: nn.Module, momentum: float | None) -> None:
    """Set the running-statistics momentum of every BatchNorm in ``module``.

    ``None`` or a negative value keeps each layer's own momentum.
    """
    if momentum is None or momentum < 0:
        return
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum
            if hasattr(m, "_moving_average_fraction"):
                m._moving_average_fraction = 1.0 - momentum


def init_decoder_weights(m: nn.Module) -> None:
    """The original's decoder init: Kaiming-normal conv weights; BatchNorm weight 1,
    bias 1e-4 (``ModelBuilder.weights_init``)."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight)
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        nn.init.ones_(m.weight)
        nn.init.constant_(m.bias, 1e-4)


def _state(weights: Any, what: str) -> tuple[Mapping[str, torch.Tensor], str]:
    if isinstance(weights, Mapping):
        return weights, what
    return read_state_dict(weights), f"{what} {weights}"


def _load_decoder(net: nn.Module, weights: Any, reinit_classifier: bool) -> None:
    state, source = _state(weights, "decoder weights")
    layers = tuple(getattr(net, "class_layers", ()))

    def is_class_key(key: str) -> bool:
        return key.rsplit(".", 1)[0] in layers

    if reinit_classifier:
        skipped = load_weights(net, state, source, skip=is_class_key)
        print(f"[mit_semseg] {source}: class layers {list(layers)} not loaded "
              f"(reinit_classifier); they start from random init for "
              f"num_class={net.num_class}: {skipped}", file=sys.stderr)
        return
    own = net.state_dict()
    for key in own:
        if is_class_key(key) and key in state and state[key].shape != own[key].shape:
            raise WeightsError(
                f"{source}: class layer '{key.rsplit('.', 1)[0]}' has "
                f"{state[key].shape[0]} classes in the file but the model was built with "
                f"num_class={net.num_class} (DATASET.num_class differs from the checkpoint's). "
                f"To fine-tune on another class count set MODEL.reinit_classifier True "
                f"(build_decoder(..., reinit_classifier=True)).")
    load_weights(net, state, source)


def build_encoder(arch: str, weights: Any = "", *, imagenet: bool = False,
                  model_dir: str = DEFAULT_PRETRAINED_DIR, mirrors: Sequence[str] = (),
                  bn_momentum: float | None = None,
                  options: Mapping[str, Any] | None = None) -> nn.Module:
    """Encoder ``arch`` with ``weights`` (a state dict or a file, loaded strictly); with
    no weights, ImageNet weights when ``imagenet`` (downloaded once into ``model_dir``,
    ``mirrors`` tried after the source), else random init."""
    spec = EncoderSpec(str(arch).lower(), pretrained=bool(imagenet) and not _given(weights),
                       model_dir=model_dir, mirrors=tuple(mirrors), options=dict(options or {}))
    net = encoder_factory(arch)(spec)
    if _given(weights):
        state, source = _state(weights, "encoder weights")
        load_weights(net, state, source)
    set_bn_momentum(net, bn_momentum)
    return net


def build_decoder(arch: str, *, num_class: int, fc_dim: int, weights: Any = "",
                  use_softmax: bool = False, in_channels: Sequence[int] | None = None,
                  reinit_classifier: bool = False,
                  bn_momentum: float | None = None) -> nn.Module:
    """Decoder ``arch`` for ``num_class`` classes on ``fc_dim`` channels (or on the
    encoder's ``in_channels``), the original's init, then ``weights`` (strict; a
    class-count mismatch is an error unless ``reinit_classifier``)."""
    kwargs: dict[str, Any] = dict(num_class=num_class, fc_dim=fc_dim, use_softmax=use_softmax)
    if in_channels is not None:
        kwargs["in_channels"] = tuple(int(c) for c in in_channels)
    net = decoder_factory(arch)(**kwargs)
    net.apply(init_decoder_weights)
    if _given(weights):
        _load_decoder(net, weights, reinit_classifier)
    set_bn_momentum(net, bn_momentum)
    return net


def _given(weights: Any) -> bool:
    return isinstance(weights, Mapping) or bool(weights)


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
        BatchNorm momentum: ``MODEL.bn_momentum``.
        """
        model = cfg.MODEL
        enc_w, dec_w = weights if weights is not None else ("", "")
        momentum = float(model.get("bn_momentum", -1.0))
        options = dict(model.get("encoder_options", {}) or {})
        encoder = build_encoder(model.arch_encoder, enc_w or "", imagenet=imagenet,
                                model_dir=model.get("pretrained_dir", DEFAULT_PRETRAINED_DIR),
                                mirrors=tuple(model.get("mirrors", ()) or ()),
                                bn_momentum=momentum, options=options)
        decoder = build_decoder(model.arch_decoder, num_class=int(cfg.DATASET.num_class),
                                fc_dim=int(model.fc_dim), weights=dec_w or "",
                                in_channels=getattr(encoder, "out_channels", None),
                                reinit_classifier=reinit_classifier, bn_momentum=momentum)
        return cls(encoder, decoder, config=cfg)

    @classmethod
    def from_pretrained(cls, model: str, **kwargs: Any) -> "SegmentationNetwork":
        """The network of a model folder or Hugging Face Hub repo id (see
        :func:`mit_semseg.models.folder.open_pretrained` for ``kwargs``)."""
        from .folder import open_pretrained
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
        from .folder import save_pretrained
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
                            in_channels=getattr(encoder, "out_channels", None),
                            use_softmax=use_softmax)
    return SegmentationNetwork(encoder, decoder)
