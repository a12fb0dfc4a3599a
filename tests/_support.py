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


def reference_fuse(logits, out_size, return_probs=False):
    """The original's procedure written out, as its test.py and eval.py run it:
    resize each [1, C, h, w] score map to ``out_size``, softmax over dim 1,
    scores = scores + probability / count, max over dim 1. Returns
    (labels [H, W] numpy, probs [C, H, W] tensor or None)."""
    import torch
    import torch.nn.functional as F
    scores = torch.zeros(1, logits[0].shape[1], *out_size)
    for x in logits:
        full = F.interpolate(x.float(), size=tuple(out_size), mode="bilinear", align_corners=False)
        scores = scores + F.softmax(full, dim=1) / len(logits)
    labels = torch.max(scores, dim=1).indices[0].numpy()
    return labels, (scores[0] if return_probs else None)


def assert_same_labels_up_to_ties(labels, probs, margin=1e-5):
    """``labels`` equal ``probs.argmax(0)`` wherever the two best classes of
    ``probs`` ([C, H, W]) are more than ``margin`` apart (closer ones may go
    either way under float32 rounding of the scores)."""
    import numpy as np
    top2 = probs.topk(2, dim=0).values
    decided = ((top2[0] - top2[1]) > margin).numpy()
    want = probs.argmax(0).numpy()
    bad = int((np.asarray(labels)[decided] != want[decided]).sum())
    assert bad == 0, f"{bad} decided pixels differ"
