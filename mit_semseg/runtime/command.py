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
* Layout: a command is one module of :mod:`mit_semseg.commands`, listed in its
  ``COMMANDS`` registry, with ``build_parser()`` (a :class:`CommandParser` made
  by :func:`command_parser`) and ``main(argv) -> int``, which parses with
  :func:`parse_command` (or :func:`parse_subcommand`) and runs its body with
  :func:`run_command`. Subcommands come from ``add_subparsers(dest=...,
  required=True)`` and :func:`subcommand_parser`, dispatched through a dict of
  handlers (``ACTIONS``).
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import textwrap
from typing import Any, Callable, Sequence

from ..errors import MitSemsegError
from .process import tune_allocator

__all__ = ["EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_INTERRUPTED", "DEVICES_HELP",
           "CommandParser", "command_parser", "subcommand_parser", "add_overrides",
           "parse_command", "parse_subcommand", "run_command", "report_error", "moved_command"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

DEVICES_HELP = ("devices: cpu, 0, 0-3, 0,2, gpu1, cuda:1, or auto = GPU(s) if CUDA is "
                "available, else the CPU")
_OVERRIDE_HELP = ("config overrides as KEY VALUE pairs, before or after the flags, e.g. "
                  "TEST.checkpoint epoch_20.pth DIR ckpt/run2")
_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Za-z0-9_]+)*$")


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that records what :func:`parse_command` needs to know:
    ``takes_overrides`` (trailing/leading ``KEY VALUE`` pairs land in ``args.opts``,
    set by :func:`add_overrides`) and ``subcommands`` (name -> parser, filled by
    :func:`subcommand_parser`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.takes_overrides = False
        self.subcommands: dict[str, CommandParser] = {}


def _fill(description: str) -> str:
    return "\n\n".join(textwrap.fill(p, 79) for p in description.split("\n\n"))


def command_parser(prog: str, description: str, epilog: str | None = None, *,
                   config: str | None = None, config_default: str | None = None,
                   config_help: str | None = None,
                   devices: str | None = None, device_default: str = "auto",
                   device_aliases: Sequence[str] = (), device_note: str = "",
                   overrides: bool = True,
                   formatter_class: type[argparse.HelpFormatter] =
                   argparse.RawDescriptionHelpFormatter) -> CommandParser:
    """A :class:`CommandParser` with the shared flags.

    ``config``: None (no ``--cfg``), ``"required"``, ``"optional"`` (default
    ``config_default``) or ``"append"`` (repeatable, required); ``config_help``
    replaces its help text. ``devices``: None, ``"one"`` or ``"many"`` adds
    ``--gpus`` (plus ``device_aliases``, e.g. the original's ``--gpu``);
    ``device_note`` is appended to its help. ``overrides``: trailing/leading
    ``KEY VALUE`` pairs land in ``args.opts``. ``description`` is wrapped at 79
    columns, paragraph by paragraph; ``epilog`` is printed as written (with the
    default ``formatter_class``)."""
    parser = CommandParser(prog=prog, description=_fill(description), epilog=epilog,
                           formatter_class=formatter_class)
    _add_shared_flags(parser, config, config_default, config_help, devices, device_default,
                      device_aliases, device_note, overrides)
    return parser


def subcommand_parser(parser: CommandParser, subparsers: Any, name: str, summary: str,
                      description: str, epilog: str | None = None, *,
                      config: str | None = None, config_default: str | None = None,
                      config_help: str | None = None,
                      devices: str | None = None, device_default: str = "auto",
                      device_aliases: Sequence[str] = (), device_note: str = "",
                      overrides: bool = True) -> CommandParser:
    """The parser of subcommand ``name`` of ``parser``: ``subparsers`` is what
    ``parser.add_subparsers(dest=..., required=True)`` returned; ``summary`` is its
    line in ``parser``'s help. The shared flags as :func:`command_parser`; the
    subcommand is recorded in ``parser.subcommands`` for :func:`parse_subcommand`."""
    child = subparsers.add_parser(name, help=summary, description=_fill(description),
                                  epilog=epilog,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    if not isinstance(child, CommandParser):
        raise TypeError(f"subcommand {name!r}: parser.add_subparsers() must come from a "
                        f"CommandParser (command_parser)")
    _add_shared_flags(child, config, config_default, config_help, devices, device_default,
                      device_aliases, device_note, overrides)
    parser.subcommands[name] = child
    return child


def _add_shared_flags(parser: CommandParser, config: str | None, config_default: str | None,
                      config_help: str | None, devices: str | None, device_default: str,
                      device_aliases: Sequence[str], device_note: str,
                      overrides: bool) -> None:
    if config == "append":
        parser.add_argument("--cfg", action="append", required=True, metavar="FILE",
                            help=config_help or "config file (YAML); repeat for several models")
    elif config == "required":
        parser.add_argument("--cfg", required=True, metavar="FILE",
                            help=config_help or "config file (YAML)")
    elif config == "optional":
        parser.add_argument("--cfg", default=config_default, metavar="FILE",
                            help=config_help or "config file (default: %(default)s)")
    elif config is not None:
        raise ValueError(f"config={config!r}: expected None, 'required', 'optional' or 'append'")
    if devices is not None:
        flags = ["--gpus", *device_aliases]
        what = "one device" if devices == "one" else "one or more devices"
        parser.add_argument(*flags, dest="gpus", default=device_default, metavar="SPEC",
                            help=f"{what}; {DEVICES_HELP} (default: %(default)s){device_note}")
    if overrides:
        add_overrides(parser)


def add_overrides(parser: CommandParser, help: str = _OVERRIDE_HELP) -> None:
    """Let ``parser`` take ``KEY VALUE`` config overrides anywhere among its flags
    (into ``args.opts``); ``help`` is their help text."""
    parser.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE", help=help)
    parser.takes_overrides = True


def parse_command(parser: argparse.ArgumentParser,
                  argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with flags and ``KEY VALUE`` overrides in any order (where
    ``parser`` is a :class:`CommandParser` that takes them); usage errors (exit
    status 2) name the word at fault and where overrides go."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if getattr(parser, "takes_overrides", False):
        args = parser.parse_intermixed_args(argv)
    else:
        args = parser.parse_args(argv)
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


def parse_subcommand(parser: CommandParser, argv: Sequence[str] | None = None
                     ) -> tuple[str, CommandParser, argparse.Namespace]:
    """``(name, its parser, its arguments)`` of ``argv`` = a subcommand of ``parser``
    (:func:`subcommand_parser`) and its arguments, parsed by :func:`parse_command`.
    ``--help`` and a missing or unknown subcommand are argparse's (exit status 0 /
    2, naming the choices)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in parser.subcommands:
        parser.parse_args(argv)  # the help, or the usage error naming the choices
        parser.error(f"the first argument must be one of {', '.join(parser.subcommands)}")
    child = parser.subcommands[argv[0]]
    return argv[0], child, parse_command(child, argv[1:])


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


def moved_command(old: str, new: str, argv: Sequence[str] | None = None) -> int:
    """For round 2's ``python -m <old>``: print one line on stderr naming ``new``, the
    command that replaced it, with the same arguments; returns EXIT_USAGE."""
    argv = list(sys.argv[1:] if argv is None else argv)
    line = " ".join([new, shlex.join(argv)]) if argv else new
    print(f"error: python -m {old} is no longer a command; run: {line}", file=sys.stderr,
          flush=True)
    return EXIT_USAGE
