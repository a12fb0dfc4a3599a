"""Any timm backbone with feature maps as an encoder: ``MODEL.arch_encoder timm:<name>``.

``timm:convnext_tiny.fb_in1k`` builds timm's ``convnext_tiny`` (pretrained tag
``fb_in1k``) as a feature extractor (timm's ``features_only``, which uses the
model's ``forward_intermediates`` where it has one) and wraps it in the encoder
contract: ``forward(x, return_feature_maps=False)`` returns the feature maps
(NCHW), ``out_channels`` lists their widths, so no ``MODEL.fc_dim`` is needed.

Levels: by default the last four of the levels timm reports for the model
(strides 4, 8, 16, 32 on ConvNeXt, Swin or a ResNet, whose stride-2 level is
left out), what UPerNet fuses; C1 and PPM read the last one, the deep
supervision heads the one before (decoders take what they need from the list,
and the earlier levels are computed on the way to the last anyway).
``MODEL.encoder_options.out_indices`` picks other levels (timm's indices).

Any input size: an input whose sides are not multiples of the largest stride
(``size_divisor``) is padded with zeros at the bottom and right (zero is the
mean colour after normalisation) and each feature map is cropped back to
``ceil(side / stride)`` cells, the size a padded convolution of that stride
gives, so whole-image, sliding-window and exported inference run at any size;
inputs that are multiples (training, whole mode with ``padding_constant`` 32)
compute exactly timm's model. timm pads Swin's windows inside each block.

``MODEL.encoder_options`` (all optional):

* ``out_indices``: feature levels (timm's indices; negative from the end).
* ``pretrained_file``: a local weights file used instead of the Hub download
  when the encoder starts from ImageNet weights (``MODEL.pretrained`` and no
  ``MODEL.weights_encoder``); read by timm's loader, which adapts the
  original releases' keys as for its own files.
* ``feature_norm``: a LayerNorm over the channels of each returned map (the
  ConvNeXt and Swin segmentation backbones add one per output); False by default.
* ``drop_path_rate`` (stochastic depth) and any other keyword argument of the
  timm model (``output_stride``, ``window_size`` ...) are passed to
  ``timm.create_model``; one the model does not take is an error naming the key.

Weights: ImageNet weights come through timm's own pretrained mechanism (the
Hugging Face cache; ``HF_HUB_OFFLINE=1`` is honoured, and a missing file is one
line saying where it goes) or ``pretrained_file``. timm is imported only when a
``timm:`` encoder is built (``pip install -e ".[timm]"``, after torch and its
matching torchvision: see docs/modern-models.md).
"""
from __future__ import annotations

import difflib
import os
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputNotFoundError, MitSemsegError
from .registry import EncoderSpec, UnknownArchError, register_encoder

__all__ = ["TIMM_PREFIX", "TimmEncoder", "TimmError", "TimmNotInstalledError",
           "UnknownTimmModelError", "import_timm", "build_timm_encoder", "timm_weights_path"]

TIMM_PREFIX = "timm:"
# MODEL.encoder_options keys read here; every other key goes to timm.create_model
_OWN_OPTIONS = ("out_indices", "pretrained_file", "feature_norm")
_DEFAULT_LEVELS = 4  # the last four levels: UPerNet's input


class TimmError(MitSemsegError, RuntimeError):
    """A ``timm:`` encoder cannot be built as asked (the message says why and what to do)."""


class TimmNotInstalledError(MitSemsegError, ImportError):
    """timm (or a torchvision that fits the installed torch) is missing."""


class UnknownTimmModelError(UnknownArchError, MitSemsegError):
    """A ``timm:`` name that timm does not have (the message lists close names)."""


_INSTALL = ("install torch's matching torchvision from the channel torch came from first, "
            "then pip install -e \".[timm]\" -c <(python -c \"from importlib.metadata import version; "
            "print('torch==' + version('torch'))\") (docs/modern-models.md: without the "
            "constraint, pip replaces your torch with the newest CUDA build)")


def import_timm(what: str = "timm: encoders") -> Any:
    """``import timm`` with an error that says how to install it when it fails
    (``what``: who needs it, for the message)."""
    try:
        import timm
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing == "timm":
            raise TimmNotInstalledError(f"{what} need the timm package: {_INSTALL}") \
                from None
        if missing == "torchvision":
            raise TimmNotInstalledError(f"timm is installed but torchvision is not: {_INSTALL}") \
                from None
        raise
    except (ImportError, RuntimeError, OSError) as exc:
        # a torchvision built for another torch fails as timm imports it
        # ("operator torchvision::nms does not exist", undefined symbols)
        try:
            from importlib.metadata import version
            vision = version("torchvision")
        except Exception:  # noqa: BLE001 - only for the message
            vision = "?"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TimmNotInstalledError(
            f"timm could not be imported ({first}): torchvision {vision} does not fit torch "
            f"{torch.__version__}; {_INSTALL}") from None
    return timm


def _unknown_model(timm: Any, name: str) -> UnknownTimmModelError:
    base = name.split(".", 1)[0]
    close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; close names: {', '.join(TIMM_PREFIX + c for c in close)}" if close else \
        "; python -c \"import timm; print(timm.list_models('*convnext*'))\" lists names"
    return UnknownTimmModelError(f"Unknown encoder '{TIMM_PREFIX}{name}': timm "
                                 f"{timm.__version__} has no model '{base}'{hint}")


def _pretrained_cfg(timm: Any, name: str) -> Any:
    """timm's pretrained config of ``name`` (its tag, or the default one), or None."""
    try:
        return timm.models.get_pretrained_cfg(name)
    except RuntimeError as exc:  # an unknown pretrained tag
        base, _, tag = name.partition(".")
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{base}.*")]
        raise TimmError(f"{TIMM_PREFIX}{name}: {exc} Its tags: {', '.join(tags) or 'none'}") \
            from None


def timm_weights_path(name: str) -> str:
    """Where timm reads ``name``'s ImageNet weights from: the Hugging Face cache
    folder of its Hub repo (or torch hub's checkpoints folder for URL-only weights)."""
    timm = import_timm()
    cfg = _pretrained_cfg(timm, name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub_id:
        from huggingface_hub import constants
        return os.path.join(constants.HF_HUB_CACHE, "models--" + hub_id.replace("/", "--"))
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def _offline_error(name: str, exc: BaseException) -> TimmError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "") not in \
        ("", "0", "false", "False") else ""
    try:
        where = timm_weights_path(name)
    except Exception:  # noqa: BLE001 - only for the message
        where = "the Hugging Face cache"
    return TimmError(
        f"{TIMM_PREFIX}{name}: its ImageNet weights could not be loaded{offline} ({reason}); "
        f"timm reads them from {where}. Fetch them once where there is a network "
        f"(python -c \"import timm; timm.create_model('{name}', pretrained=True)\" with the "
        f"same HF_HOME), or set MODEL.encoder_options.pretrained_file to a local file, or "
        f"MODEL.pretrained False to start from random weights")


class _NotAnArgument(TimmError):
    """An encoder option the timm model does not take."""


class _ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _exporting() -> bool:
    """True while a tracer or exporter records the forward (sizes are symbolic:
    padding must not depend on the example's size)."""
    if torch.jit.is_tracing():
        return True
    compiler = getattr(torch, "compiler", None)
    for probe in ("is_exporting", "is_compiling"):
        fn = getattr(compiler, probe, None)
        if fn is not None and fn():
            return True
    return False


class TimmEncoder(nn.Module):
    """A timm feature extractor under the encoder contract.

    ``body``: the timm ``features_only`` model; ``levels``: which of its outputs
    are returned (positions in its output list). ``out_channels`` / ``reductions``:
    width and stride of each returned map; ``size_divisor``: the largest stride
    (inputs of other sizes are padded to it and the maps cropped back).
    """

    def __init__(self, body: nn.Module, name: str, levels: Sequence[int] | None = None,
                 feature_norm: bool = False) -> None:
        super().__init__()
        info = body.feature_info
        channels, reductions = list(info.channels()), list(info.reduction())
        levels = list(range(len(channels))) if levels is None else [int(i) for i in levels]
        self.body = body
        self.timm_name = name
        self.levels = tuple(levels)
        self.out_channels = tuple(int(channels[i]) for i in levels)
        self.reductions = tuple(int(reductions[i]) for i in levels)
        self.size_divisor = max(self.reductions)
        fmt = getattr(body, "output_fmt", "NCHW")
        self.channels_last_out = str(getattr(fmt, "value", fmt)).upper() == "NHWC"
        self.norms = (nn.ModuleList(_ChannelNorm(c, eps=1e-6) for c in self.out_channels)
                      if feature_norm else None)

    def forward(self, x: torch.Tensor, return_feature_maps: bool = False) -> list[torch.Tensor]:
        h, w = x.shape[-2], x.shape[-1]
        d = self.size_divisor
        pad_h, pad_w = (d - h % d) % d, (d - w % d) % d
        padded = _exporting() or bool(pad_h) or bool(pad_w)
        if padded:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        outs = self.body(x)
        maps = []
        for level, r in zip(self.levels, self.reductions):
            f = outs[level]
            if self.channels_last_out:
                f = f.permute(0, 3, 1, 2)
            if padded:
                f = f[:, :, :(h + r - 1) // r, :(w + r - 1) // r]
            maps.append(f)
        if self.norms is not None:
            maps = [norm(f) for norm, f in zip(self.norms, maps)]
        return maps if return_feature_maps else [maps[-1]]

    def extra_repr(self) -> str:
        return (f"timm={self.timm_name!r}, levels={self.levels}, "
                f"out_channels={self.out_channels}, reductions={self.reductions}")


def _plain(value: Any) -> Any:
    """YACS values (CfgNode, tuples) as plain Python for timm."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


def _levels(count: int, out_indices: Any) -> list[int] | None:
    if out_indices is not None:
        return None  # timm returns exactly the levels asked for
    return list(range(max(0, count - _DEFAULT_LEVELS), count))


def build_timm_encoder(name: str, *, pretrained: bool = False,
                       options: Mapping[str, Any] | None = None) -> TimmEncoder:
    """The ``timm:<name>`` encoder (``name`` without the prefix, a pretrained tag
    allowed: ``convnext_tiny.fb_in1k``); ``pretrained``: start from its ImageNet
    weights (timm's download or ``options["pretrained_file"]``); ``options``: see
    the module docstring. Raises ``UnknownTimmModelError`` for a name timm lacks,
    ``TimmError`` for a model without feature maps, an option it does not take, or
    weights that cannot be had."""
    options = {str(k): _plain(v) for k, v in dict(options or {}).items()}
    timm = import_timm()
    if not timm.is_model(name):
        raise _unknown_model(timm, name)
    cfg = _pretrained_cfg(timm, name)
    kwargs = {k: v for k, v in options.items() if k not in _OWN_OPTIONS}
    out_indices = options.get("out_indices")
    if out_indices is not None:
        kwargs["out_indices"] = tuple(int(i) for i in (out_indices if isinstance(
            out_indices, (list, tuple)) else [out_indices]))
    file = options.get("pretrained_file") or ""
    if pretrained and file:
        if not os.path.isfile(file):
            raise InputNotFoundError(f"MODEL.encoder_options.pretrained_file: {file} does "
                                     f"not exist")
        kwargs["pretrained_cfg_overlay"] = dict(file=os.path.abspath(file))
    fixed = cfg is not None and getattr(cfg, "fixed_input_size", False)
    asked = {k for k in ("dynamic_img_size", "strict_img_size") if k in kwargs}
    body = None
    if fixed and not asked:
        # ViT / Swin style models are built for one input size: ask for any size, in
        # the words of this timm version (dynamic_img_size; the Swin of earlier 1.0
        # releases: strict_img_size False)
        for extra in ({"dynamic_img_size": True}, {"strict_img_size": False}):
            try:
                body = _create(timm, name, pretrained, {**kwargs, **extra}, bool(file))
            except _NotAnArgument:
                continue
            if not _fixed_size(body):
                break
        if body is None or _fixed_size(body):
            raise TimmError(f"{TIMM_PREFIX}{name} takes only the input size it was built "
                            f"for (neither dynamic_img_size nor strict_img_size False frees it "
                            f"in timm {timm.__version__}); segmentation needs any size")
    else:
        body = _create(timm, name, pretrained, kwargs, bool(file))
    levels = _levels(len(body.feature_info.channels()), out_indices)
    return TimmEncoder(body, name, levels, feature_norm=bool(options.get("feature_norm", False)))


def _fixed_size(body: nn.Module) -> bool:
    """True when a patch embedding of ``body`` still asserts its build-time size."""
    return any(getattr(m, "strict_img_size", False) and getattr(m, "img_size", None)
               for m in body.modules())


def _create(timm: Any, name: str, pretrained: bool, kwargs: dict[str, Any],
            local_file: bool) -> nn.Module:
    """``timm.create_model(name, features_only=True, ...)`` with one-line errors."""
    try:
        body = timm.create_model(name, pretrained=pretrained, features_only=True, **kwargs)
    except TypeError as exc:
        given = [k for k in kwargs if k in str(exc)]
        key = f"MODEL.encoder_options.{given[0]}" if given else "MODEL.encoder_options"
        raise _NotAnArgument(f"{TIMM_PREFIX}{name}: {key} is not an argument of this model "
                             f"({exc})") from None
    except (OSError, ValueError) as exc:
        if pretrained and not local_file:
            raise _offline_error(name, exc) from None
        raise TimmError(f"{TIMM_PREFIX}{name}: {exc}") from None
    except (RuntimeError, AssertionError, NotImplementedError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if pretrained and not local_file and "hub" in first.lower():
            raise _offline_error(name, exc) from None  # timm's Hub download, not the model
        raise TimmError(f"{TIMM_PREFIX}{name} offers no feature maps for a segmentation "
                        f"encoder (timm's features_only / forward_intermediates: {first})") \
            from None
    if getattr(body, "feature_info", None) is None or not len(body.feature_info.channels()):
        raise TimmError(f"{TIMM_PREFIX}{name} offers no feature maps for a segmentation encoder")
    return body


@register_encoder(TIMM_PREFIX, prefix=True)
def _timm(spec: EncoderSpec) -> TimmEncoder:
    return build_timm_encoder(spec.arch[len(TIMM_PREFIX):], pretrained=spec.pretrained,
                              options=spec.options)
