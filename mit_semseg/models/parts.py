"""Encoders and decoders by name, from their registered factories, with the
original's initialisation and strict weight loading; ``parts_from_config`` makes
both parts of the network a config describes (``build_model`` wraps them in one
``SegmentationNetwork``; model folders use the parts to check weights)."""
from __future__ import annotations

import sys
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from .registry import EncoderSpec, decoder_factory, encoder_factory
from .weights import DEFAULT_PRETRAINED_DIR, WeightsError, load_weights, read_state_dict

__all__ = ["build_encoder", "build_decoder", "parts_from_config", "declared_channels",
           "set_bn_momentum", "init_decoder_weights"]


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


def declared_channels(encoder: nn.Module) -> tuple[int, ...] | None:
    """The channels of each feature map an encoder declares (``out_channels``, a
    sequence), or None: then the decoder is built on ``MODEL.fc_dim`` as the
    original's are (a number there, as HRNetV2's total width, is not a
    declaration)."""
    value = getattr(encoder, "out_channels", None)
    if isinstance(value, (list, tuple)) and value:
        return tuple(int(c) for c in value)
    return None


def parts_from_config(cfg: Any, weights: tuple[Any, Any] | None = None, *,
                      imagenet: bool = False,
                      reinit_classifier: bool = False) -> tuple[nn.Module, nn.Module]:
    """(encoder, decoder) of ``cfg.MODEL`` / ``cfg.DATASET.num_class``; see
    ``SegmentationNetwork.from_config`` for the arguments."""
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
                            in_channels=declared_channels(encoder),
                            reinit_classifier=reinit_classifier, bn_momentum=momentum)
    return encoder, decoder
