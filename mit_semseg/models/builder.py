"""Model lookup (``ModelBuilder``) and the trainable ``SegmentationModule``.

Encoders and decoders are found through the plain dicts ``ENCODERS`` and
``DECODERS``; names are case-insensitive. Weights files are loaded strictly
(see ``weights.py``).
"""
from __future__ import annotations

import sys
from typing import Callable

import torch
import torch.nn as nn

from . import decoders as _dec
from .weights import DEFAULT_PRETRAINED_DIR, WeightsError, load_weights, read_state_dict

__all__ = ["ENCODERS", "DECODERS", "ModelBuilder", "SegmentationModuleBase",
           "SegmentationModule", "set_bn_momentum"]

EncoderFactory = Callable[[bool, str], nn.Module]


def _mobilenetv2dilated(pretrained: bool, model_dir: str) -> nn.Module:
    from . import mobilenet
    return mobilenet.MobileNetV2Dilated(mobilenet.mobilenetv2(pretrained, model_dir), dilate_scale=8)


def _resnet(depth: int, dilated: bool) -> EncoderFactory:
    def build(pretrained: bool, model_dir: str) -> nn.Module:
        from . import resnet
        net = getattr(resnet, f"resnet{depth}")(pretrained, model_dir)
        return resnet.ResnetDilated(net, dilate_scale=8) if dilated else resnet.Resnet(net)
    return build


def _resnext101(pretrained: bool, model_dir: str) -> nn.Module:
    from . import resnet, resnext
    return resnet.Resnet(resnext.resnext101(pretrained, model_dir))


def _hrnetv2(pretrained: bool, model_dir: str) -> nn.Module:
    from . import hrnet
    return hrnet.hrnetv2(pretrained, model_dir)


ENCODERS: dict[str, EncoderFactory] = {
    "mobilenetv2dilated": _mobilenetv2dilated,
    "resnet18": _resnet(18, dilated=False),
    "resnet18dilated": _resnet(18, dilated=True),
    "resnet50": _resnet(50, dilated=False),
    "resnet50dilated": _resnet(50, dilated=True),
    "resnet101": _resnet(101, dilated=False),
    "resnet101dilated": _resnet(101, dilated=True),
    "resnext101": _resnext101,
    "hrnetv2": _hrnetv2,
}

DECODERS: dict[str, Callable[..., nn.Module]] = {
    "c1": _dec.C1,
    "c1_deepsup": _dec.C1DeepSup,
    "ppm": _dec.PPM,
    "ppm_deepsup": _dec.PPMDeepsup,
    "upernet_lite": lambda **kw: _dec.UPerNet(fpn_dim=256, **kw),
    "upernet": lambda **kw: _dec.UPerNet(fpn_dim=512, **kw),
}


def _lookup(table: dict, arch: str, kind: str):
    key = str(arch).lower()
    if key not in table:
        raise ValueError(f"Unknown {kind} '{arch}'; expected one of {sorted(table)}")
    return table[key]


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


class ModelBuilder:
    """Builds encoders and decoders by name (the original's API)."""

    @staticmethod
    def weights_init(m: nn.Module) -> None:
        """Decoder init: Kaiming-normal conv weights; BatchNorm weight 1, bias 1e-4."""
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.constant_(m.bias, 1e-4)

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
        factory = _lookup(ENCODERS, arch, "encoder")
        net = factory(pretrained and not weights, model_dir)
        if weights:
            load_weights(net, read_state_dict(weights), f"encoder weights {weights}")
        set_bn_momentum(net, bn_momentum)
        return net

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
        factory = _lookup(DECODERS, arch, "decoder")
        net = factory(num_class=num_class, fc_dim=fc_dim, use_softmax=use_softmax)
        net.apply(ModelBuilder.weights_init)
        if weights:
            _load_decoder(net, weights, reinit_classifier)
        set_bn_momentum(net, bn_momentum)
        return net


def _load_decoder(net: nn.Module, path: str, reinit_classifier: bool) -> None:
    state = read_state_dict(path)
    layers = net.class_layers

    def is_class_key(key: str) -> bool:
        return key.rsplit(".", 1)[0] in layers

    if reinit_classifier:
        skipped = load_weights(net, state, f"decoder weights {path}", skip=is_class_key)
        print(f"[mit_semseg] {path}: class layers {list(layers)} not loaded (reinit_classifier); "
              f"they start from random init for num_class={net.num_class}: {skipped}",
              file=sys.stderr)
        return
    own = net.state_dict()
    for key in own:
        if is_class_key(key) and key in state and state[key].shape != own[key].shape:
            raise WeightsError(
                f"decoder weights {path}: class layer '{key.rsplit('.', 1)[0]}' has "
                f"{state[key].shape[0]} classes in the file but the model was built with "
                f"num_class={net.num_class} (DATASET.num_class differs from the checkpoint's). "
                f"To fine-tune on another class count set MODEL.reinit_classifier True "
                f"(build_decoder(..., reinit_classifier=True)).")
    load_weights(net, state, f"decoder weights {path}")


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

    def forward(self, feed_dict: dict, *, segSize=None):
        if isinstance(feed_dict, (list, tuple)) and len(feed_dict) == 1:
            feed_dict = feed_dict[0]
        features = self.encoder(feed_dict["img_data"], return_feature_maps=True)
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
