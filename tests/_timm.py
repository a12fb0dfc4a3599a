"""The timm-marked tests: skip cleanly where timm (the ``[timm]`` extra) is absent.

``timm_or_skip()`` at the top of a test module imports timm through the package's
own import (so a torchvision that does not fit torch skips too, with the reason)
or skips the module. Tiny models only: ``convnext_atto`` and Swin with small
dimensions (``SWIN_TINY``), random weights, nothing downloaded.
"""
from __future__ import annotations

import pytest

# a Swin-T layout at toy width: 4 stages, strides 4..32, window 7 (tests run in seconds)
SWIN = "timm:swin_tiny_patch4_window7_224"
SWIN_TINY = {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}
CONVNEXT = "timm:convnext_atto"


def timm_or_skip():
    """timm, or skip the calling module when it cannot be imported."""
    from mit_semseg.models.timm_encoder import TimmNotInstalledError, import_timm
    try:
        return import_timm()
    except TimmNotInstalledError as exc:
        pytest.skip(f"timm not usable here: {exc}", allow_module_level=True)


def option_overrides(options: dict) -> list[str]:
    """``MODEL.encoder_options.K V`` overrides for ``options``."""
    out: list[str] = []
    for key, value in options.items():
        out += [f"MODEL.encoder_options.{key}", str(value)]
    return out
