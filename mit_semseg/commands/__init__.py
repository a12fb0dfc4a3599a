"""Every command-line program of the package, one module each, all under the
contract of :mod:`mit_semseg.runtime.command` (flags and overrides in any
order, ``--gpus``, one-line errors, documented exit status).

``python -m mit_semseg COMMAND [ARGS]`` runs one; the repository's
``train.py``, ``eval.py``, ``eval_multipro.py`` and ``test.py`` are the same
commands under the original's script names.
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import NamedTuple, Sequence

__all__ = ["Command", "COMMANDS", "load", "main"]


class Command(NamedTuple):
    """A registry entry: the module under :mod:`mit_semseg.commands` and the line
    ``python -m mit_semseg --help`` shows."""

    module: str
    summary: str


# the registry, in the order of the help; modules are imported when their command runs
COMMANDS: dict[str, Command] = {
    "train": Command("train", "train a model (train.py)"),
    "eval": Command("eval", "evaluate a checkpoint on the validation list (eval.py)"),
    "eval_multipro": Command("eval_multipro", "eval.py over several processes "
                                              "(eval_multipro.py)"),
    "test": Command("test", "segment photos, write PNGs (test.py)"),
    "web": Command("web", "serve the web demo (needs the [web] extra)"),
    "export": Command("export", "export to ONNX and check it (needs the [onnx] extra)"),
    "quantize": Command("quantize", "int8 ONNX model calibrated on your images, checked and "
                                    "timed ([onnx])"),
    "datatools": Command("datatools", "prepare and check your own dataset, import "
                                      "annotations (LabelMe, COCO, CVAT, Label Studio)"),
    "prelabel": Command("prelabel", "write predictions as pre-annotations (COCO, Label "
                                    "Studio, LabelMe, CVAT)"),
    "curves": Command("curves", "draw a training run's curves (needs the [plot] extra)"),
    "pretrained": Command("pretrained", "download a model MIT released (mirrors, resume, "
                                        "SHA-256)"),
    "models": Command("models", "convert weights, save / fetch / push model folders"),
    "synthetic": Command("synthetic", "write the synthetic demo data set"),
    "benchmark": Command("benchmark", "measure speed and memory"),
}


def load(name: str) -> ModuleType:
    """The module of command ``name`` (a key of ``COMMANDS``)."""
    return importlib.import_module(f"{__name__}.{COMMANDS[name].module}")


def _usage() -> str:
    rows = "\n".join(f"  {name:14s} {cmd.summary}" for name, cmd in COMMANDS.items())
    return (f"usage: python -m mit_semseg COMMAND [ARGS]  (COMMAND --help for its options)\n\n"
            f"commands:\n{rows}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``argv[0]`` with the rest of ``argv``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), end="")
        return 0 if argv else 2
    name = argv[0]
    if name not in COMMANDS:
        print(_usage(), end="", file=sys.stderr)
        print(f"error: unknown command '{name}'; expected one of {list(COMMANDS)}",
              file=sys.stderr)
        return 2
    return load(name).main(argv[1:])
