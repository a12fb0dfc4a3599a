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
from typing import Sequence

__all__ = ["COMMANDS", "main"]

# command (also its module's name) and its one-line summary
_TABLE = """
train          train a model (train.py)
eval           evaluate a checkpoint on the validation list (eval.py)
eval_multipro  eval.py over several processes (eval_multipro.py)
test           segment photos, write PNGs (test.py)
web            serve the web demo (needs the [web] extra)
export         export to ONNX and check it (needs the [onnx] extra)
quantize       int8 ONNX model calibrated on your images, checked and timed ([onnx])
datatools      prepare and check your own dataset
curves         draw a training run's curves (needs the [plot] extra)
pretrained     download a model MIT released (mirrors, resume, SHA-256)
models         convert weights, save / fetch / push model folders
synthetic      write the synthetic demo data set
benchmark      measure speed and memory
"""
COMMANDS: dict[str, str] = dict(line.split(None, 1) for line in _TABLE.strip().splitlines())


def _usage() -> str:
    rows = "\n".join(f"  {name:14s} {summary}" for name, summary in COMMANDS.items())
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
    module = importlib.import_module(f".{name}", __name__)
    return module.main(argv[1:])
