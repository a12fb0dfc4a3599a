"""What the evaluation and prediction commands share: the config, loaded and logged."""
from __future__ import annotations

from typing import Sequence

from yacs.config import CfgNode

from ..config import load_cfg
from ..runtime.process import set_threads
from ..runtime.log import setup_logger


def load_logged_config(cfg_file: str, opts: Sequence[str]) -> CfgNode:
    """``load_cfg`` plus the log lines the original's scripts print."""
    cfg = load_cfg(cfg_file, opts)
    logger = setup_logger(distributed_rank=0, filename=None)
    logger.info("Loaded configuration file %s", cfg_file)
    logger.info("Running with config:\n%s", cfg)
    return cfg


def set_num_threads(cfg: CfgNode, section: str) -> None:
    """Apply ``<section>.num_threads`` (``VAL`` or ``TEST``; checked when the config was
    loaded) through the one thread policy, ``runtime.process.set_threads``."""
    set_threads(int(cfg[section].num_threads))
