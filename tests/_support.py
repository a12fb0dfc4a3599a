"""Helpers shared by the tests: the parity weight rule and case loading."""
from __future__ import annotations

import os

import torch

# the parity/README.md weight rule; the benchmark builds its models with it too
from mit_semseg.benchmark import rule_tensor  # noqa: F401  (re-exported)

HERE = os.path.dirname(os.path.abspath(__file__))
PARITY_DIR = os.path.join(HERE, "parity")
PARITY_EXTRA_DIR = os.path.join(HERE, "parity_extra")


def rule_state_dict(keys) -> dict[str, torch.Tensor]:
    """A state dict for ``[(key, shape, dtype), ...]`` filled by the parity rule."""
    return {k: rule_tensor(k, s) for k, s, *_ in keys}


def load_case(name: str, folder: str = PARITY_DIR) -> dict:
    return torch.load(os.path.join(folder, name + ".pt"), weights_only=False)


def parity_names(folder: str = PARITY_DIR) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".pt"))
