"""The one device grammar of every command (``--gpus`` / ``--gpu`` / ``device=``).

A device spec is a comma-separated list of items, each one of::

    auto          every visible GPU (one, where one device is asked for), else the CPU
    cpu, -1       the CPU
    N, gpuN       GPU N             cuda, cuda:N    GPU 0 / GPU N
    N-M, gpuN-gpuM    GPUs N..M (either order)

``parse_devices`` gives the original's names (``['gpu0', 'gpu1']`` or
``['cpu']``), ``resolve_devices`` checked ``torch.device`` objects, and
``resolve_device`` the single device of a one-device command.
"""
from __future__ import annotations

import functools
import os
import re
import warnings
from typing import Any, Sequence

import torch

from ..errors import MitSemsegError

__all__ = ["NotSupportedCliException", "DeviceUnavailableError", "REGEX", "process_range",
           "parse_devices", "device_names", "resolve_devices", "resolve_device",
           "training_devices"]


class NotSupportedCliException(MitSemsegError, ValueError):
    """A device string that the grammar does not understand."""


class DeviceUnavailableError(MitSemsegError, RuntimeError):
    """The requested GPU does not exist or CUDA is not available."""


def process_range(xpu: str, inp: Sequence[str]) -> list[str]:
    """Device names for an inclusive id range in either order: ``('gpu', ('3', '1'))`` ->
    ``['gpu1', 'gpu2', 'gpu3']``."""
    lo, hi = sorted(int(g) for g in inp)
    return [f"{xpu}{i}" for i in range(lo, hi + 1)]


# (pattern, match groups -> device names), tried in order; the original's table plus
# the CPU, 'auto' and torch's own 'cuda[:N]' spelling.
REGEX = [
    (re.compile(r"^(?:cpu|-1)$"), lambda groups: ["cpu"]),
    (re.compile(r"^auto$"), lambda groups: ["auto"]),
    (re.compile(r"^(?:gpu|cuda:)?(\d+)$"), lambda groups: [f"gpu{groups[0]}"]),
    (re.compile(r"^cuda$"), lambda groups: ["gpu0"]),
    (re.compile(r"^(?:gpu)?(\d+)-(?:gpu)?(\d+)$"), functools.partial(process_range, "gpu")),
]


def _tokens(spec: Any) -> list[str]:
    if isinstance(spec, torch.device):
        return ["cpu"] if spec.type == "cpu" else [f"gpu{spec.index or 0}"]
    if spec is None:
        return ["auto"]
    if isinstance(spec, (list, tuple)):
        return [t for item in spec for t in _tokens(item)]
    return [str(spec)]


def parse_devices(input_devices: Any) -> list[str]:
    """``'0-3'``, ``'0,2'``, ``'gpu1'``, ``'gpu0-gpu2'``, ``'cuda:1'`` -> ``['gpu0', ...]``
    (no duplicates); ``'cpu'`` / ``'-1'`` -> ``['cpu']``; ``'auto'`` stays ``['auto']``.
    No CUDA check (see ``resolve_devices``)."""
    out: list[str] = []
    for text in _tokens(input_devices):
        for part in text.split(","):
            token = part.strip().lower()
            for pattern, expand in REGEX:
                m = pattern.match(token)
                if m:
                    ids = expand(m.groups())
                    break
            else:
                raise NotSupportedCliException(
                    f'Can not recognize device: "{part}" (use e.g. cpu, 0, 0-3, 0,2, gpu1, '
                    f'cuda:1 or auto)')
            out += [d for d in ids if d not in out]
    if "auto" in out and len(out) > 1:
        raise NotSupportedCliException(f"device 'auto' cannot be combined with others: "
                                       f"{','.join(out)}")
    if "cpu" in out and len(out) > 1:
        raise NotSupportedCliException(f"the device list mixes 'cpu' with GPUs "
                                       f"({','.join(out)}); choose one")
    return out


def device_names(spec: Any, *, every_gpu: bool = True) -> list[str]:
    """``parse_devices`` with ``auto`` expanded: every visible GPU (``every_gpu``) or
    GPU 0, else ``['cpu']``. No check that the GPUs exist."""
    names = parse_devices(spec)
    if names == ["auto"]:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            return ["cpu"]
        return [f"gpu{i}" for i in range(count if every_gpu else 1)]
    return names


def _check(name: str, spec: Any) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    index = int(name[3:])
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(f"device {spec!r} requested but CUDA is not available; "
                                     f"use 'cpu' (e.g. --gpus cpu)")
    if index >= torch.cuda.device_count():
        raise DeviceUnavailableError(f"device {spec!r} requested but only "
                                     f"{torch.cuda.device_count()} GPU(s) are visible")
    return torch.device("cuda", index)


def resolve_devices(spec: Any, *, every_gpu: bool = True) -> list[torch.device]:
    """The devices of ``spec`` as ``torch.device`` objects; a GPU that does not exist
    raises ``DeviceUnavailableError``."""
    return [_check(name, spec) for name in device_names(spec, every_gpu=every_gpu)]


def resolve_device(device: Any = "auto") -> torch.device:
    """The one device of ``device`` (a spec string, an int, a ``torch.device`` or None
    = ``auto``: GPU 0 if CUDA is available, else the CPU)."""
    found = resolve_devices(device, every_gpu=False)
    if len(found) != 1:
        raise NotSupportedCliException(f"one device expected, got {device!r} "
                                       f"({len(found)} devices)")
    return found[0]


def training_devices(spec: Any, *, distributed: bool = False,
                     local_rank: int = 0) -> tuple[torch.device, list[int]]:
    """The main device and the GPU ids a training process uses.

    ``spec``: a device spec or a list of device names; ``auto`` is every visible GPU
    (GPU ``local_rank`` under torchrun), else the CPU. ``distributed`` (torchrun):
    each process uses GPU ``local_rank`` unless ``spec`` is ``cpu``. Without CUDA a
    GPU request trains on the CPU with a warning (a laptop running a GPU recipe); a
    GPU id this machine does not have raises ``DeviceUnavailableError``. The CUDA
    device is made current.
    """
    names = parse_devices(spec)
    if names == ["auto"]:
        names = device_names("auto", every_gpu=not distributed)
    if names == ["cpu"]:
        return torch.device("cpu"), []
    if not torch.cuda.is_available():
        warnings.warn(f"--gpus asks for {','.join(names)} but CUDA is not available: "
                      f"training on the CPU (pass --gpus cpu to silence this)", stacklevel=2)
        return torch.device("cpu"), []
    count = torch.cuda.device_count()
    if distributed:
        if local_rank >= count:
            raise DeviceUnavailableError(
                f"LOCAL_RANK {local_rank} has no GPU: only {count} visible; start at most "
                f"{count} processes per node (torchrun --nproc_per_node)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank), [local_rank]
    ids = [int(g[3:]) for g in names]
    too_high = [i for i in ids if i >= count]
    if too_high:
        raise DeviceUnavailableError(
            f"--gpus asks for GPU {too_high[0]} but only {count} are visible (ids 0-{count - 1}; "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    torch.cuda.set_device(ids[0])
    return torch.device("cuda", ids[0]), ids
