"""DataParallel that tells modules about their replicas (``__data_parallel_replicate__``).

After ``DataParallel.replicate`` has made one copy of the network per device,
each sub-module that defines ``__data_parallel_replicate__(ctx, copy_id)`` is
called once per copy: the copies of the same sub-module share one ``ctx``
object, and copy 0 is always called before the others. Synchronized
BatchNorm uses it to connect its copies.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch.nn as nn

__all__ = ["CallbackContext", "execute_replication_callbacks", "DataParallelWithCallback",
           "patch_replication_callback"]


class CallbackContext:
    """Attribute namespace shared by the copies of one sub-module during one replication."""


def execute_replication_callbacks(modules: Sequence[nn.Module]) -> None:
    """Run ``__data_parallel_replicate__(ctx, copy_id)`` on every sub-module of every copy.

    ``modules[i]`` is the copy for device ``i``; all copies must have the same
    structure. Copy 0 is handled completely before copy 1, and so on.
    """
    if not modules:
        return
    n_sub = len(list(modules[0].modules()))
    shared = [CallbackContext() for _ in range(n_sub)]
    for copy_id, copy in enumerate(modules):
        subs = list(copy.modules())
        if len(subs) != n_sub:
            raise RuntimeError("replicas of a DataParallel module differ in structure")
        for ctx, sub in zip(shared, subs):
            callback = getattr(sub, "__data_parallel_replicate__", None)
            if callback is not None:
                callback(ctx, copy_id)


class DataParallelWithCallback(nn.DataParallel):
    """``nn.DataParallel`` that runs the replication callbacks after each replication.

    Use it (or :func:`patch_replication_callback`) so that
    ``SynchronizedBatchNorm*`` computes its statistics over all devices.
    """

    def replicate(self, module: nn.Module, device_ids: Sequence[int]) -> list[nn.Module]:
        replicas = super().replicate(module, device_ids)
        execute_replication_callbacks(replicas)
        return replicas


def patch_replication_callback(data_parallel: nn.DataParallel) -> None:
    """Make an existing ``nn.DataParallel`` (or subclass) instance run the replication callbacks.

    Equivalent to building it as :class:`DataParallelWithCallback`; patching
    twice, or patching a ``DataParallelWithCallback``, changes nothing.
    """
    if not isinstance(data_parallel, nn.DataParallel):
        raise TypeError(f"expected an nn.DataParallel, got {type(data_parallel).__name__}")
    if isinstance(data_parallel, DataParallelWithCallback):
        return
    inner = data_parallel.replicate
    if getattr(inner, "_runs_replication_callbacks", False):
        return

    @functools.wraps(inner)
    def replicate(module: nn.Module, device_ids: Sequence[int]) -> list[nn.Module]:
        replicas = inner(module, device_ids)
        execute_replication_callbacks(replicas)
        return replicas

    replicate._runs_replication_callbacks = True  # type: ignore[attr-defined]
    data_parallel.replicate = replicate  # type: ignore[method-assign]
