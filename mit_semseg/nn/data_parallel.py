"""Single-process multi-GPU helpers: one user-made batch per device.

The training loader yields a list with one batch dict per GPU
(``collate_fn=user_scattered_collate``); images in different dicts may have
different sizes. ``UserScatteredDataParallel`` sends dict ``i`` to device
``device_ids[i]`` and runs one replica on each.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch
import torch.nn as nn
from torch.nn.parallel import gather
from torch.nn.parallel._functions import Gather  # noqa: F401 (the original exposed it here)

__all__ = ["UserScatteredDataParallel", "DictGatherDataParallel", "user_scattered_collate",
           "async_copy_to", "dict_gather"]

Device = Union[int, str, torch.device]


def async_copy_to(obj: Any, dev: Device, main_stream: Optional[torch.cuda.Stream] = None) -> Any:
    """Copy every tensor in ``obj`` (nested dicts, lists, tuples) to ``dev`` without blocking.

    ``dev`` is a CUDA index (int, or digits as a string: copied with
    ``Tensor.cuda``, as the original) or any torch device. Dicts come back as ``dict``,
    lists as ``list``, tuples (named ones too) as their own type; strings and
    other objects are returned unchanged. When the copy runs on a side stream,
    pass the stream that will use the result as ``main_stream`` so the
    allocator keeps the memory alive for it.
    """
    if torch.is_tensor(obj):
        if isinstance(dev, int) or (isinstance(dev, str) and dev.isdigit()):
            moved = obj.cuda(int(dev), non_blocking=True)  # a CUDA index, as in the original
        else:
            moved = obj.to(torch.device(dev), non_blocking=True)
        if main_stream is not None and moved.is_cuda and moved is not obj:
            moved.record_stream(main_stream)
        return moved
    if isinstance(obj, (str, bytes)):
        return obj
    if isinstance(obj, Mapping):
        return {key: async_copy_to(value, dev, main_stream) for key, value in obj.items()}
    if isinstance(obj, tuple):
        items = [async_copy_to(value, dev, main_stream) for value in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, Sequence):
        return [async_copy_to(value, dev, main_stream) for value in obj]
    return obj


def user_scattered_collate(batch: list) -> list:
    """DataLoader ``collate_fn`` that keeps the list of per-device batches as it is."""
    return batch


_copy_streams: dict[int, torch.cuda.Stream] = {}


def _copy_stream(device: int) -> torch.cuda.Stream:
    """A background stream of ``device`` for host-to-device copies, made once."""
    if device not in _copy_streams:
        _copy_streams[device] = torch.cuda.Stream(device)
    return _copy_streams[device]


def _copy_to_devices(batches: Sequence[Any], device_ids: Sequence[int]) -> list[Any]:
    """Copy ``batches[i]`` to ``device_ids[i]`` on side streams that the main streams then wait for."""
    copies = []
    for batch, device in zip(batches, device_ids):
        with torch.cuda.device(device):
            main_stream = torch.cuda.current_stream()
            side_stream = _copy_stream(device)
            with torch.cuda.stream(side_stream):
                copies.append(async_copy_to(batch, device, main_stream=main_stream))
            main_stream.wait_stream(side_stream)
    return copies


def _unsqueeze_scalars(obj: Any) -> Any:
    """0-dim tensors become 1-element vectors so that gathering them concatenates silently."""
    if torch.is_tensor(obj):
        return obj.unsqueeze(0) if obj.dim() == 0 else obj
    if isinstance(obj, dict):
        return type(obj)((key, _unsqueeze_scalars(value)) for key, value in obj.items())
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_unsqueeze_scalars(value) for value in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unsqueeze_scalars(value) for value in obj)
    return obj


def dict_gather(outputs: Sequence[Any], target_device: Device, dim: int = 0) -> Any:
    """Gather per-replica outputs on ``target_device`` (-1: the CPU), dicts and sequences included.

    Tensors are concatenated along ``dim`` (0-dim ones become one entry per
    replica), dicts and sequences element-wise, ``None`` stays ``None``.
    """
    return gather(_unsqueeze_scalars(list(outputs)), target_device, dim=dim)


class DictGatherDataParallel(nn.DataParallel):
    """``nn.DataParallel`` whose outputs are gathered with :func:`dict_gather`."""

    def gather(self, outputs: Sequence[Any], output_device: Device) -> Any:
        return dict_gather(outputs, output_device, dim=self.dim)


class UserScatteredDataParallel(DictGatherDataParallel):
    """``nn.DataParallel`` fed with a list holding one batch per device.

    ``model(batches)`` runs ``module(batches[i], **kwargs)`` on
    ``device_ids[i]`` (at most one batch per device; fewer batches use the
    first devices) and gathers the outputs on ``output_device``; scalars
    (e.g. a loss per replica) become a vector with one entry per replica,
    dicts and sequences are gathered element-wise. Without CUDA devices the
    list must hold a single batch, which is passed to the module as it is.
    Combine with :func:`patch_replication_callback` for synchronized BatchNorm.
    """

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        if not self.device_ids:
            batches = self._batch_list(inputs)
            if len(batches) != 1:
                raise ValueError(f"without CUDA devices expected 1 batch, got {len(batches)}")
            return self.module(batches[0], **kwargs)
        return super().forward(*inputs, **kwargs)

    @staticmethod
    def _batch_list(inputs: tuple) -> Sequence[Any]:
        if len(inputs) != 1 or not isinstance(inputs[0], (list, tuple)):
            raise TypeError("UserScatteredDataParallel expects one positional argument: "
                            "a list with one batch per device")
        return inputs[0]

    def scatter(self, inputs: tuple, kwargs: Optional[dict],
                device_ids: Sequence[int]) -> tuple[list[tuple], list[dict]]:
        batches = self._batch_list(inputs)
        if not 1 <= len(batches) <= len(device_ids):
            raise ValueError(f"got {len(batches)} batches for {len(device_ids)} devices")
        used = list(device_ids[:len(batches)])
        per_device_inputs = [(batch,) for batch in _copy_to_devices(batches, used)]
        per_device_kwargs = [async_copy_to(dict(kwargs or {}), device) for device in used]
        return per_device_inputs, per_device_kwargs
