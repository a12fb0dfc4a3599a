"""``python eval_multipro.py`` / ``python -m mit_semseg eval_multipro``: eval.py with the
validation list split over several processes; the merged numbers equal eval.py's.

eval.py with the validation list split over several processes (one per GPU, or
--workers CPU processes); the merged numbers equal eval.py's.
"""
from __future__ import annotations

from typing import Sequence

from ..runtime.command import CommandParser, command_parser, parse_command, run_command

EPILOG = """\
examples:
  python eval_multipro.py --gpus 0-3 --cfg CFG
  python eval_multipro.py --gpus cpu --workers 2 --cfg CFG

Exit status: 0 done, 1 error (one line on stderr), 2 usage error, 130 interrupted.
"""

_DESCRIPTION = __doc__.split("\n\n", 1)[1]


def build_parser() -> CommandParser:
    """The command's parser (flags and overrides)."""
    parser = command_parser("python eval_multipro.py", _DESCRIPTION,
        EPILOG, config="optional", config_default="config/ade20k-resnet50dilated-ppm_deepsup.yaml",
        devices="many", device_default="auto")
    parser.add_argument("--workers", type=int, default=2,
                        help="number of CPU processes with --gpus cpu (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = parse_command(build_parser(), argv)

    def body() -> None:
        from ..evaluation import evaluate_multiprocess
        from ._shared import load_logged_config
        evaluate_multiprocess(load_logged_config(args.cfg, args.opts),
                              _processes(args.gpus, args.workers))
        print("Evaluation Done!")
    return run_command(body)


def _processes(spec: str, workers: int) -> list[str]:
    """The device of each evaluation process: one per GPU of ``spec``, or ``workers``
    processes on the CPU."""
    from ..runtime.devices import resolve_devices
    found = resolve_devices(spec)
    if found[0].type == "cpu":
        return ["cpu"] * max(1, int(workers))
    return [str(d) for d in found]
