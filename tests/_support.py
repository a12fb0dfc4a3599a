"""Helpers shared by the tests: the parity weight rule and case loading."""
from __future__ import annotations

import os
import zlib
from math import prod

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PARITY_DIR = os.path.join(HERE, "parity")
PARITY_EXTRA_DIR = os.path.join(HERE, "parity_extra")


def rule_tensor(key: str, shape, dtype: str | torch.dtype = torch.float32) -> torch.Tensor:
    """The value parity/README.md assigns to state-dict entry ``key``."""
    shape = tuple(shape)
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    if key.endswith("running_mean"):
        return torch.randn(shape, generator=g) * 0.1
    if key.endswith("running_var"):
        return torch.rand(shape, generator=g) * 0.5 + 0.75
    if len(shape) == 1 and key.endswith("weight"):
        return torch.rand(shape, generator=g) * 0.5 + 0.5
    if len(shape) == 1:
        return torch.randn(shape, generator=g) * 0.05
    fan_in = prod(shape[1:])
    scale = 10.0 if shape[0] == 150 else 1.0
    return torch.randn(shape, generator=g) * scale * (1.0 / fan_in) ** 0.5


def rule_state_dict(keys) -> dict[str, torch.Tensor]:
    """A state dict for ``[(key, shape, dtype), ...]`` filled by the parity rule."""
    return {k: rule_tensor(k, s) for k, s, *_ in keys}


def load_case(name: str, folder: str = PARITY_DIR) -> dict:
    return torch.load(os.path.join(folder, name + ".pt"), weights_only=False)


def parity_names(folder: str = PARITY_DIR) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".pt"))
