"""What each model family declares about its blocks, for the passes of
:mod:`mit_semseg.accel` (BatchNorm folding, fused convolutions, factorized
pyramids), so that those passes import no class of a family.

A family registers a :class:`Fusable` for each of its module classes that
holds more than plain ``nn.Sequential`` chains (which the passes understand
without help)::

    register_fusable(Bottleneck, Fusable(
        pairs=(("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
        residual=Residual(convs=("conv1", "conv2", "conv3"),
                          norms=("bn1", "bn2", "bn3"), shortcut="downsample")))

Declarations are looked up along the class's MRO, so a subclass inherits its
parent's unless it registers its own.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

__all__ = ["Residual", "Fusable", "register_fusable", "fusable_spec", "residual_block", "FUSABLE"]


@dataclass(frozen=True)
class Residual:
    """A residual block ``activation(body(x) + shortcut(x))``.

    The body is either the named child convolutions ``convs`` (each followed by its
    BatchNorm in ``norms`` and a ReLU, except that the last one's ReLU comes after
    the add), or the child ``nn.Sequential`` named ``sequence`` (conv / BatchNorm /
    activation layers, the last convolution without activation). ``shortcut``:
    the child applied to the input (None: identity). ``activation``: after the add,
    ``"relu"`` or ``"none"``. ``enabled_by``: a boolean attribute that must be true
    for the block to add its input (MobileNetV2's ``use_res_connect``).
    """

    convs: tuple[str, ...] = ()
    norms: tuple[str, ...] = ()
    sequence: str = ""
    shortcut: str | None = None
    activation: str = "relu"
    enabled_by: str = ""


@dataclass(frozen=True)
class Fusable:
    """``pairs``: (conv, BatchNorm) children where the conv feeds the BatchNorm and
    nothing else. ``stem``: (conv, BatchNorm, activation) children run in this order
    in ``forward`` (an activation child may be shared, as HRNetV2's ``relu``, and is
    used by the stem only). ``residual``: see :class:`Residual`. ``pyramid``: the
    module has a ``factorized_pyramid`` switch (PPM, UPerNet)."""

    pairs: tuple[tuple[str, str], ...] = ()
    stem: tuple[tuple[str, str, str], ...] = ()
    residual: Residual | None = None
    pyramid: bool = False


FUSABLE: dict[type, Fusable] = {}


def register_fusable(cls: type[nn.Module], spec: Fusable) -> type[nn.Module]:
    """Declare ``spec`` for instances of ``cls``; returns ``cls``."""
    FUSABLE[cls] = spec
    return cls


def residual_block(depth: int, shortcut: str = "downsample") -> Fusable:
    """The declaration of a ResNet-style block: ``conv1``..``conv<depth>`` each followed
    by ``bn1``..``bn<depth>`` and a ReLU (the last one after the add of ``shortcut``)."""
    convs = tuple(f"conv{i}" for i in range(1, depth + 1))
    norms = tuple(f"bn{i}" for i in range(1, depth + 1))
    return Fusable(pairs=tuple(zip(convs, norms)),
                   residual=Residual(convs=convs, norms=norms, shortcut=shortcut))


def fusable_spec(module: nn.Module) -> Fusable | None:
    """The declaration for ``module``'s class (or the nearest base class), or None."""
    for cls in type(module).__mro__:
        spec = FUSABLE.get(cls)
        if spec is not None:
            return spec
    return None
