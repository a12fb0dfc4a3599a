"""``python test.py`` / ``python -m mit_semseg test``: segment photos (a file, a folder
searched recursively, or an odgt list) and write image | prediction PNGs.

Segment photos with DIR/encoder_<TEST.checkpoint> +
DIR/decoder_<TEST.checkpoint>: writes an image | prediction PNG per input into
TEST.result and prints the classes found.
"""
from __future__ import annotations

from typing import Sequence

from ..runtime.command import CommandParser, command_parser, parse_command, run_command

EPILOG = """\
examples:
  python test.py --imgs photos/ --cfg config/synthetic-demo.yaml --gpus cpu TEST.result out/
  python test.py --imgs photos/ --cfg CFG TEST.result out/ TEST.confidence True TEST.save_probs True
    (beside each out/NAME.png also NAME_confidence.png, the probability of the predicted
     class as 8-bit grayscale, and NAME_probs.npz, key "probs": [num_class, H, W] float16)
  python test.py --imgs photos/ --cfg CFG TEST.result out/ TEST.save_labels True
    (beside each out/NAME.png also NAME_labels.png, the label map: class id + 1, or the
     0-based id for DATASET.label_format zero_based, palette = the class colours, 16-bit
     above 255 classes; and NAME_labels.json, the classes present with their shares)
  (TEST.num_threads 1: one CPU thread, often faster on a small shared CPU)

Unreadable images are reported and skipped (the exit status stays 0).
Exit status: 0 done, 1 error (one line on stderr), 2 usage error, 130 interrupted.
"""

_DESCRIPTION = __doc__.split("\n\n", 1)[1]


def build_parser() -> CommandParser:
    """The command's parser (flags and overrides)."""
    parser = command_parser("python test.py", _DESCRIPTION, EPILOG, config="optional",
        config_default="config/ade20k-resnet50dilated-ppm_deepsup.yaml",
        devices="one", device_aliases=("--gpu",))
    parser.add_argument("--imgs", required=True,
                        help="an image, a folder of images (recursive), or an .odgt list")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = parse_command(build_parser(), argv)

    def body() -> None:
        from ..prediction import run_test
        from ..runtime.devices import resolve_device
        from ._shared import load_logged_config, set_num_threads
        cfg = load_logged_config(args.cfg, args.opts)
        set_num_threads(cfg, "TEST")
        run_test(cfg, args.imgs, resolve_device(args.gpus))
    return run_command(body)
