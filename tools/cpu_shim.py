"""Run a script written for CUDA (the original repository's test.py) on a
CPU-only machine, for timing: ``PYTHON cpu_shim.py SCRIPT ARGS...``.

``torch.cuda.set_device``, ``Tensor.cuda`` and ``Module.cuda`` become no-ops,
and where torchvision does not import (it does not beside recent CPU builds
of torch) a stand-in ``torchvision.transforms.Normalize`` is provided, the
one torchvision name the original's dataset code uses; ``collections.Mapping``
and ``collections.Sequence`` (removed in Python 3.10, used by the original's
``async_copy_to``) point to their ``collections.abc`` classes. Imports only the
standard library and torch, so any interpreter that has torch can run it.
"""
import collections
import collections.abc
import os
import runpy
import sys
import types

import torch


def _normalize_standin() -> types.ModuleType:
    class Normalize:
        def __init__(self, mean, std):
            self.mean = torch.tensor(mean).view(-1, 1, 1)
            self.std = torch.tensor(std).view(-1, 1, 1)

        def __call__(self, tensor):
            return (tensor - self.mean) / self.std

    package = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    transforms.Normalize = Normalize
    package.transforms = transforms
    return package


def install() -> None:
    """The patches of the module docstring, in this interpreter (import the
    original's code after it)."""
    for name in ("Mapping", "Sequence"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    torch.cuda.set_device = lambda *args, **kwargs: None
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.cuda.synchronize = lambda *args, **kwargs: None  # eval.py's timing
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent or broken beside this torch
        standin = _normalize_standin()
        sys.modules["torchvision"] = standin
        sys.modules["torchvision.transforms"] = standin.transforms


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: cpu_shim.py SCRIPT [ARGS...]")
    install()
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
