"""``python eval.py`` / ``python -m mit_semseg eval``: evaluate a checkpoint on
DATASET.list_val on one device.

Evaluate DIR/encoder_<VAL.checkpoint> + DIR/decoder_<VAL.checkpoint> on
DATASET.list_val with multi-scale inference (DATASET.imgSizes): per-class IoU,
mean IoU and pixel accuracy, also written to DIR/eval_<checkpoint>.json, and a
report page DIR/eval_<checkpoint>.html (per-class table, confusion matrix,
worst images).
"""
from __future__ import annotations

from typing import Sequence

from ..runtime.command import CommandParser, command_parser, parse_command, run_command

EPILOG = """\
examples:
  python eval.py --gpus 0 --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml
  python eval.py --gpus cpu --cfg config/synthetic-demo.yaml VAL.visualize True
  python eval.py --gpus cpu --cfg config/synthetic-demo.yaml VAL.worst_images 16 VAL.boundary_iou True
  python eval.py --gpus cpu --cfg CFG VAL.num_threads 1     # small shared CPU: often faster

Exit status: 0 done, 1 error (one line on stderr), 2 usage error, 130 interrupted.
"""

_DESCRIPTION = __doc__.split("\n\n", 1)[1]


def build_parser() -> CommandParser:
    """The command's parser (flags and overrides)."""
    return command_parser("python eval.py", _DESCRIPTION,
        EPILOG, config="optional", config_default="config/ade20k-resnet50dilated-ppm_deepsup.yaml",
        devices="one", device_aliases=("--gpu",))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = parse_command(build_parser(), argv)

    def body() -> None:
        from ..evaluation import evaluate
        from ..runtime.devices import resolve_device
        from ._shared import load_logged_config, set_num_threads
        cfg = load_logged_config(args.cfg, args.opts)
        set_num_threads(cfg, "VAL")
        evaluate(cfg, resolve_device(args.gpus))
        print("Evaluation Done!")
    return run_command(body)
