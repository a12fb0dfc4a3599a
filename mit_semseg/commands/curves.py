"""``python -m mit_semseg curves DIR``: draw a training run's curves to a PNG.

Draw loss, accuracy, learning rates, validation mean IoU (and
TRAIN.best_metric) and per-class validation IoU of a training run
(DIR/metrics.jsonl) to a PNG (needs matplotlib: the [plot] extra). With many
classes the per-class panel shows the best and worst five, and the lowest IoUs
of the best epoch as bars.
"""
from __future__ import annotations

import os
from typing import Sequence

from ..runtime.command import CommandParser, command_parser, parse_command, run_command

_DESCRIPTION = __doc__.split("\n\n", 1)[1]


def build_parser() -> CommandParser:
    """The command's parser."""
    parser = command_parser("python -m mit_semseg curves", _DESCRIPTION,
                            "Exit status: 0 written, 1 error (one line on stderr), 2 usage error.",
                            overrides=False)
    parser.add_argument("run", metavar="DIR", help="the run folder (cfg.DIR) or its metrics.jsonl")
    parser.add_argument("-o", "--output", help="PNG to write (default: DIR/curves.png)")
    parser.add_argument("--title", default=None, help="figure title (default: the folder name)")
    parser.add_argument("--classes", nargs="+", metavar="NAME",
                        help="class names whose validation IoU curves to draw (default: every "
                             "class up to 10, else the best and worst five)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = parse_command(build_parser(), argv)

    def body() -> None:
        from ..training.curves import plot_curves
        from ..training.monitor import read_metrics
        folder = args.run if os.path.isdir(args.run) else os.path.dirname(args.run)
        out = args.output or os.path.join(folder, "curves.png")
        records = read_metrics(args.run)
        title = args.title if args.title is not None else os.path.basename(os.path.abspath(folder))
        plot_curves(records, out, title, args.classes)
        print(f"curves written to {out}")
    return run_command(body)
