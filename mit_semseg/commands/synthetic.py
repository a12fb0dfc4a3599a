"""``python -m mit_semseg synthetic``: write the small synthetic scene-parsing data set
of the offline demo.

Write a small synthetic scene-parsing data set (images, masks, odgt lists,
class table).
"""
from __future__ import annotations

from typing import Sequence

from ..runtime.command import CommandParser, command_parser, parse_command, run_command

_DESCRIPTION = __doc__.split("\n\n", 1)[1]


def build_parser() -> CommandParser:
    """The command's parser."""
    from ..data.synthetic import MAX_CLASSES
    parser = command_parser("python -m mit_semseg synthetic", _DESCRIPTION, overrides=False)
    parser.add_argument("--root", default="data/synthetic", help="output folder")
    parser.add_argument("--num-train", type=int, default=200)
    parser.add_argument("--num-val", type=int, default=50)
    parser.add_argument("--min-size", type=int, default=64, help="smallest image side")
    parser.add_argument("--max-size", type=int, default=160, help="largest image side")
    parser.add_argument("--num-class", type=int, default=MAX_CLASSES)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    from ..data.synthetic import CLASS_NAMES, make_synthetic_dataset
    args = parse_command(build_parser(), argv)

    def body() -> None:
        paths = make_synthetic_dataset(args.root, args.num_train, args.num_val,
                                       (args.min_size, args.max_size), args.num_class, args.seed)
        print(f"wrote {args.num_train} training and {args.num_val} validation images "
              f"({args.num_class} classes: {', '.join(CLASS_NAMES[:args.num_class])})")
        for split, path in paths.items():
            print(f"  {split}: {path}")
    return run_command(body)
