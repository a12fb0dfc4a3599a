"""Train a scene-parsing model: ``python train.py --cfg FILE --gpus SPEC [KEY VALUE ...]``.

The training code lives in ``mit_semseg.train``; this script parses the
command line, builds the config and calls ``mit_semseg.train.main``.
See docs/training.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

EPILOG = """\
examples:
  python train.py --gpus 0-3 --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml
  python train.py --gpus cpu --cfg config/synthetic-demo.yaml TRAIN.num_epoch 2
  python train.py --gpus 0 --cfg CFG TRAIN.start_epoch 5     # continue after epoch 5
  python train.py --gpus 0 --cfg CFG --resume auto           # continue from the newest checkpoint
  torchrun --nproc_per_node 4 train.py --cfg CFG             # one process per GPU (DDP)

Checkpoints, log.txt and the effective config.yaml are written to the config's DIR.
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: --cfg, --gpus, --resume and trailing KEY VALUE overrides."""
    parser = argparse.ArgumentParser(
        description="Train a semantic-segmentation model (encoder + decoder) with SGD and a "
                    "poly learning rate, as configured by a YAML file.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", default="config/ade20k-resnet50dilated-ppm_deepsup.yaml",
                        metavar="FILE", help="config file (default: %(default)s)")
    parser.add_argument("--gpus", default="auto", metavar="SPEC",
                        help="devices: 0-3, 0,2, gpu1, cpu, or auto = every visible GPU, else the "
                             "CPU (default: %(default)s). Several GPUs train in one process with "
                             "one batch each. Under torchrun each process uses GPU LOCAL_RANK; "
                             "only 'cpu' matters there.")
    parser.add_argument("--resume", metavar="PATH|auto", default=None,
                        help="continue from a state_epoch_N.pth or state_iter_G.pth file in DIR "
                             "(optimizer, schedule and random state included), or 'auto' for the "
                             "newest one (none: start from scratch). Without it, TRAIN.start_epoch "
                             "N continues from the epoch-N checkpoint.")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, e.g. TRAIN.num_epoch 10 DIR ckpt/run2")
    return parser.parse_args(argv)


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = parse_args(argv)
    from mit_semseg.checkpoint import CheckpointError
    from mit_semseg.config import ConfigError, load_cfg
    from mit_semseg.dataset import DatasetError
    from mit_semseg.models import WeightsError
    from mit_semseg.train import DataNotFoundError, DeviceError, NonFiniteLossError, main
    from mit_semseg.utils import NotSupportedCliException

    expected = (ConfigError, CheckpointError, DataNotFoundError, DatasetError, DeviceError,
                NonFiniteLossError, NotSupportedCliException, WeightsError)
    try:
        cfg = load_cfg(args.cfg, args.opts)
        main(cfg, args.gpus, resume=args.resume)
    except expected as exc:
        rank = os.environ.get("RANK")
        prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
        print(f"{prefix}error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
