"""Where model families register themselves: encoders and decoders by name, and
what the acceleration passes may fuse in their blocks.

A family is one file that ends with its registrations::

    @register_encoder("resnet50dilated", "resnet101dilated",
                      fusable={Bottleneck: residual_block(3)})
    def _dilated(spec: EncoderSpec) -> nn.Module:
        ...

    @register_decoder("c1")
    class C1(Decoder): ...

Nothing else needs an edit: ``ModelBuilder``, ``build_model`` and every command
find the new names through ``ENCODERS`` / ``DECODERS``. A prefix registration
(``register_encoder("timm:", prefix=True)``) serves a whole namespace of names
(``timm:convnext_tiny``); its factory reads the rest of the name from
``spec.arch``.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

import torch.nn as nn

from .fusable import Fusable, register_fusable
from .weights import DEFAULT_PRETRAINED_DIR

__all__ = ["EncoderSpec", "ENCODERS", "DECODERS", "ENCODER_PREFIXES", "register_encoder",
           "register_decoder", "unregister", "encoder_factory", "decoder_factory",
           "DEFAULT_PRETRAINED_DIR", "UnknownArchError"]



class UnknownArchError(ValueError):
    """A name that no family registered (the message lists the valid names)."""


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder factory is asked to build.

    ``arch``: the name asked for, lower case (with its prefix for a prefix family).
    ``pretrained``: start from ImageNet weights (downloaded once into ``model_dir``,
    trying ``mirrors`` after the source). ``options``: family-specific settings
    (``MODEL.encoder_options``), empty for the original's families.
    """

    arch: str
    pretrained: bool = False
    model_dir: str = DEFAULT_PRETRAINED_DIR
    mirrors: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)


EncoderFactory = Callable[[EncoderSpec], nn.Module]
# decoder factories take keyword arguments num_class, fc_dim, use_softmax and, when the
# encoder declares its channels, in_channels (one entry per feature map)
DecoderFactory = Callable[..., nn.Module]

ENCODERS: dict[str, EncoderFactory] = {}
DECODERS: dict[str, DecoderFactory] = {}
ENCODER_PREFIXES: dict[str, EncoderFactory] = {}

_F = TypeVar("_F")


def _declare(fusable: Mapping[type, Fusable] | None) -> None:
    for cls, spec in (fusable or {}).items():
        register_fusable(cls, spec)


def _claim(table: dict, names: tuple[str, ...], obj: Any, kind: str) -> None:
    for name in names:
        key = name.lower()
        old = table.get(key)
        if old is not None and old is not obj and getattr(old, "__qualname__", None) != \
                getattr(obj, "__qualname__", object()):
            raise ValueError(f"{kind} '{key}' is registered already (by {old!r})")
        table[key] = obj


def register_encoder(*names: str, fusable: Mapping[type, Fusable] | None = None,
                     prefix: bool = False) -> Callable[[_F], _F]:
    """Decorator: register ``factory(spec: EncoderSpec) -> nn.Module`` under ``names``.

    The module a factory returns follows the encoder contract:
    ``forward(x, return_feature_maps=False)`` returns a list of feature maps (all
    levels with ``return_feature_maps``, else the last one only). It may declare
    ``out_channels`` (a sequence, one entry per level) so that decoders take their
    input widths from it instead of ``MODEL.fc_dim``. ``fusable``: the family's
    block classes and what the acceleration passes may fuse in them.
    ``prefix``: each name is a prefix (``"timm:"``) that serves every name under it.
    """
    if not names:
        raise ValueError("register_encoder needs at least one name")

    def wrap(factory: _F) -> _F:
        _claim(ENCODER_PREFIXES if prefix else ENCODERS, names, factory, "encoder")
        _declare(fusable)
        return factory
    return wrap


def register_decoder(*names: str, fusable: Fusable | Mapping[type, Fusable] | None = None,
                     **defaults: Any) -> Callable[[_F], _F]:
    """Decorator: register a decoder class (or factory) under ``names``; ``defaults``
    are keyword arguments it is always built with (``fpn_dim=256`` for upernet_lite).
    ``fusable``: a ``Fusable`` for the decorated class itself, or a mapping of the
    family's block classes to theirs.

    The decoder contract: ``forward(conv_out, segSize=None)`` (see
    :mod:`mit_semseg.models.decoders`), ``logits(conv_out)`` (class scores before
    the softmax, at feature resolution), ``num_class`` and ``class_layers`` (the
    children whose outputs are the classes). Subclassing ``decoders.Decoder``
    gives all but ``logits``.
    """
    if not names:
        raise ValueError("register_decoder needs at least one name")

    def wrap(factory: _F) -> _F:
        _declare({factory: fusable} if isinstance(fusable, Fusable) else fusable)
        if not defaults:
            _claim(DECODERS, names, factory, "decoder")
            return factory

        def build(**kwargs: Any) -> nn.Module:
            return factory(**{**defaults, **kwargs})  # type: ignore[operator]
        build.__qualname__ = f"{getattr(factory, '__qualname__', 'decoder')}({defaults})"
        build.__doc__ = getattr(factory, "__doc__", None)
        _claim(DECODERS, names, build, "decoder")
        return factory
    return wrap


def unregister(*names: str) -> None:
    """Remove encoder/decoder/prefix names (a test's toy family cleaning up)."""
    for name in names:
        for table in (ENCODERS, DECODERS, ENCODER_PREFIXES):
            table.pop(name.lower(), None)


def _unknown(kind: str, arch: str, valid: list[str]) -> UnknownArchError:
    close = difflib.get_close_matches(str(arch).lower(), valid, n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return UnknownArchError(f"Unknown {kind} '{arch}'; expected one of {valid}{hint}")


def encoder_factory(arch: str) -> EncoderFactory:
    """The factory of encoder ``arch`` (case-insensitive; prefixes too)."""
    key = str(arch).lower()
    if key in ENCODERS:
        return ENCODERS[key]
    for prefix, factory in ENCODER_PREFIXES.items():
        if key.startswith(prefix) and len(key) > len(prefix):
            return factory
    valid = sorted(ENCODERS) + [f"{p}<name>" for p in sorted(ENCODER_PREFIXES)]
    raise _unknown("encoder", arch, valid)


def decoder_factory(arch: str) -> DecoderFactory:
    """The factory of decoder ``arch`` (case-insensitive)."""
    key = str(arch).lower()
    if key not in DECODERS:
        raise _unknown("decoder", arch, sorted(DECODERS))
    return DECODERS[key]
