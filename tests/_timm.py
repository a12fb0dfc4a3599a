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


NUM_CLASS = 5
# family -> (arch, encoder options); Swin also with the presets' per-level LayerNorm
FAMILIES = {"convnext": (CONVNEXT, {}),
            "swin": (SWIN, {**SWIN_TINY, "feature_norm": True})}


def make_timm_model(folder, family: str, *extra: str) -> str:
    """``folder/config.yaml`` for the family's tiny UPerNet model (stride-32 padding,
    labels at stride 4, random weights as ``{encoder,decoder}_epoch_1.pth``; the class
    layer scaled up so that several classes win on a photo); returns the config path.
    ``extra``: more ``KEY VALUE`` overrides written into the config."""
    import os

    import torch

    from mit_semseg.config import load_cfg
    from mit_semseg.models import build_model
    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    arch, options = FAMILIES[family]
    opts = ["MODEL.arch_encoder", arch, "MODEL.arch_decoder", "upernet_lite",
            "MODEL.pretrained", "False", "DATASET.num_class", str(NUM_CLASS),
            "DATASET.imgSizes", "(40, 56)", "DATASET.imgMaxSize", "120",
            "DATASET.padding_constant", "32", "DATASET.segm_downsampling_rate", "4",
            "DATASET.class_table", "", "DIR", folder,
            "VAL.checkpoint", "epoch_1.pth", "TEST.checkpoint", "epoch_1.pth",
            "VAL.workers", "0", "TEST.workers", "0", "TRAIN.workers", "0",
            *option_overrides(options), *extra]
    cfg = load_cfg(None, opts)
    path = os.path.join(folder, "config.yaml")
    with open(path, "w") as fh:
        fh.write(cfg.dump())
    torch.manual_seed(0)
    net = build_model(cfg)
    with torch.no_grad():
        for name in net.decoder.class_layers:
            net.decoder.get_submodule(name).weight.mul_(20.0)
    states = net.state_dicts()
    torch.save(states["encoder"], os.path.join(folder, "encoder_epoch_1.pth"))
    torch.save(states["decoder"], os.path.join(folder, "decoder_epoch_1.pth"))
    return path


def photo(height: int, width: int, seed: int = 0):
    """An RGB uint8 photo of flat regions with noise (labels vary across it)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (height, width, 3)).astype(np.int16) // 3
    img[: height // 2, : width // 2] += (150, 40, 40)
    img[height // 3:, width // 2:] += (30, 160, 60)
    return np.clip(img, 0, 255).astype(np.uint8)
