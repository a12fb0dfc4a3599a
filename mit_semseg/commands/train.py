"""``python train.py`` / ``python -m mit_semseg train``: train a scene-parsing model.

Train a semantic-segmentation model (encoder + decoder) with SGD and a poly
learning rate, as configured by a YAML file (see docs/training.md).
"""
from __future__ import annotations

from typing import Sequence

from ..runtime.command import CommandParser, command_parser, parse_command, run_command

EPILOG = """\
examples:
  python train.py --gpus 0-3 --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml
  python train.py --gpus cpu --cfg config/synthetic-demo.yaml TRAIN.num_epoch 2
  python train.py --gpus 0 --cfg CFG TRAIN.start_epoch 5     # continue after epoch 5
  python train.py --gpus 0 --cfg CFG --resume auto           # continue from the newest checkpoint
  torchrun --nproc_per_node 4 train.py --cfg CFG             # one process per GPU (DDP)

Checkpoints, log.txt and the effective config.yaml are written to the config's DIR.
Exit status: 0 done, 1 error (one line on stderr), 2 usage error, 130 interrupted.
"""

_DESCRIPTION = __doc__.split("\n\n", 1)[1]


def build_parser() -> CommandParser:
    """The command's parser (flags and overrides)."""
    parser = command_parser("python train.py", _DESCRIPTION,
        EPILOG, config="optional", config_default="config/ade20k-resnet50dilated-ppm_deepsup.yaml",
        devices="many",
        device_note=(". Several GPUs train in one process with one batch each; under torchrun "
                     "each process uses GPU LOCAL_RANK (only 'cpu' matters there)"))
    parser.add_argument("--resume", metavar="PATH|auto", default=None,
                        help="continue from a state_epoch_N.pth or state_iter_G.pth file in DIR "
                             "(optimizer, schedule and random state included), or 'auto' for the "
                             "newest one (none: start from scratch). Without it, TRAIN.start_epoch "
                             "N continues from the epoch-N checkpoint.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = parse_command(build_parser(), argv)

    def body() -> None:
        from ..config import load_cfg
        from ..training import main as train
        train(load_cfg(args.cfg, args.opts), args.gpus, resume=args.resume)
    return run_command(body)
