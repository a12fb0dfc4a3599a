"""The one contract of every command-line program of the package.

* Arguments: flags and config overrides (``KEY VALUE`` pairs such as
  ``TEST.checkpoint epoch_20.pth``) may come in any order; a word where a KEY
  was expected, or an unknown flag, is a usage error that says where
  overrides go.
* Devices: ``--gpus SPEC`` (the grammar of :mod:`mit_semseg.runtime.devices`);
  ``--gpu`` is the same flag where the original's script had it (eval.py,
  test.py).
* Errors: an error of the package (:class:`mit_semseg.errors.MitSemsegError`)
  is printed as one line, ``error: <message>``; anything else is a bug and
  keeps its traceback.
* Exit status: 0 done, 1 error (the line above), 2 usage error (argparse's
  message), 130 interrupted (Ctrl-C).
* A command prints its "done" / "serving" line only once that is true.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
from typing import Callable, Sequence

from ..errors import MitSemsegError
from .process import tune_allocator

__all__ = ["EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_INTERRUPTED", "DEVICES_HELP",
           "command_parser", "parse_command", "run_command", "report_error"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

DEVICES_HELP = ("devices: cpu, 0, 0-3, 0,2, gpu1, cuda:1, or auto = GPU(s) if CUDA is "
                "available, else the CPU")
_OVERRIDE_HELP = ("config overrides as KEY VALUE pairs, before or after the flags, e.g. "
                  "TEST.checkpoint epoch_20.pth DIR ckpt/run2")
_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Za-z0-9_]+)*$")


def command_parser(prog: str, description: str, epilog: str | None = None, *,
                   config: str | None = None, config_default: str | None = None,
                   devices: str | None = None, device_default: str = "auto",
                   device_aliases: Sequence[str] = (),
                   overrides: bool = True) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the shared flags.

    ``config``: None (no ``--cfg``), ``"required"``, ``"optional"`` (default
    ``config_default``) or ``"append"`` (repeatable, required). ``devices``: None,
    ``"one"`` or ``"many"`` adds ``--gpus`` (plus ``device_aliases``, e.g. the original's
    ``--gpu``).
    ``overrides``: trailing/leading ``KEY VALUE`` pairs land in ``args.opts``."""
    description = "\n\n".join(textwrap.fill(p, 79) for p in description.split("\n\n"))
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if config == "append":
        parser.add_argument("--cfg", action="append", required=True, metavar="FILE",
                            help="config file (YAML); repeat for several models")
    elif config == "required":
        parser.add_argument("--cfg", required=True, metavar="FILE", help="config file (YAML)")
    elif config == "optional":
        parser.add_argument("--cfg", default=config_default, metavar="FILE",
                            help="config file (default: %(default)s)")
    if devices is not None:
        flags = ["--gpus", *device_aliases]
        what = "one device" if devices == "one" else "one or more devices"
        parser.add_argument(*flags, dest="gpus", default=device_default, metavar="SPEC",
                            help=f"{what}; {DEVICES_HELP} (default: %(default)s)")
    if overrides:
        parser.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE",
                            help=_OVERRIDE_HELP)
    return parser


def parse_command(parser: argparse.ArgumentParser,
                  argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with flags and ``KEY VALUE`` overrides in any order; usage
    errors (exit status 2) name the word at fault and where overrides go."""
    argv = list(sys.argv[1:] if argv is None else argv)
    has_opts = any(a.dest == "opts" for a in parser._actions)
    args = parser.parse_intermixed_args(argv) if has_opts else parser.parse_args(argv)
    opts = list(getattr(args, "opts", []) or [])
    for key in opts[0::2]:
        if not _KEY.match(key):
            parser.error(f"'{key}' is neither a flag of this command nor a config key; config "
                         f"overrides are KEY VALUE pairs such as TEST.checkpoint epoch_20.pth "
                         f"and may come before or after the flags (see --help)")
    if len(opts) % 2:
        parser.error(f"config override '{opts[-1]}' has no value (overrides are KEY VALUE "
                     f"pairs)")
    return args


def report_error(exc: BaseException) -> None:
    """Print ``exc`` as the contract's one line (with the rank under torchrun)."""
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
    print(f"{prefix}error: {exc}", file=sys.stderr, flush=True)


def run_command(body: Callable[[], int | None]) -> int:
    """Run a command's body under the contract: tuned allocator, package errors as
    one line (status 1), Ctrl-C as status 130; returns the exit status."""
    tune_allocator()
    try:
        code = body()
    except MitSemsegError as exc:
        report_error(exc)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    return EXIT_OK if code is None else int(code)
