"""What the evaluation and prediction commands share: the config, loaded and logged."""
from __future__ import annotations

import os
from typing import Any, Sequence

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


def add_weight_arguments(parser: Any) -> None:
    """The flags that name a model's weights (export, quantize): a run or model folder
    and checkpoint suffix, or the two files."""
    parser.add_argument("--checkpoint-dir", metavar="DIR",
                        help="folder with encoder_<TEST.checkpoint> and decoder_<TEST.checkpoint> "
                             "(.pth or .safetensors), or a model folder (models save; its "
                             "config.yaml as --cfg) (default: the config's DIR)")
    parser.add_argument("--checkpoint", help="checkpoint suffix (default: TEST.checkpoint)")
    parser.add_argument("--encoder-weights", metavar="FILE", help=".pth or .safetensors")
    parser.add_argument("--decoder-weights", metavar="FILE", help=".pth or .safetensors")


def check_weight_arguments(parser: Any, args: Any) -> None:
    """A usage error when only one of ``add_weight_arguments``' two files is given."""
    if (args.encoder_weights is None) != (args.decoder_weights is None):
        parser.error("give both --encoder-weights and --decoder-weights, or neither")


def weight_files(args: Any, cfg: CfgNode, alternatives: str = "") -> tuple[str, str]:
    """(encoder file, decoder file) that ``add_weight_arguments``' flags name;
    CheckpointNotFoundError saying which flags give them (``alternatives``: more ways
    the command has)."""
    from ..checkpoints.files import CheckpointNotFoundError, checkpoint_paths
    if args.encoder_weights is not None:
        for path in (args.encoder_weights, args.decoder_weights):
            if not os.path.isfile(path):
                raise CheckpointNotFoundError(f"checkpoint not found: {path} (from "
                                              f"--encoder-weights / --decoder-weights)")
        return args.encoder_weights, args.decoder_weights
    folder, name = args.checkpoint_dir or cfg.DIR, args.checkpoint or cfg.TEST.checkpoint
    try:
        return checkpoint_paths(folder, name)
    except CheckpointNotFoundError as exc:
        raise CheckpointNotFoundError(
            f"checkpoint not found: {' and '.join(exc.missing)} (.pth or .safetensors); give "
            f"the weights with --checkpoint-dir DIR (and --checkpoint NAME, default "
            f"TEST.checkpoint '{cfg.TEST.checkpoint}'), or --encoder-weights FILE "
            f"--decoder-weights FILE{alternatives}") from None
