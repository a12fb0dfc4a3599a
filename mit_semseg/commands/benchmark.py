"""``python -m mit_semseg benchmark``: speed and memory, measured (see
:mod:`mit_semseg.benchmark.cli` for the options)."""
from __future__ import annotations

from typing import Sequence

from ..runtime.command import run_command


def main(argv: Sequence[str] | None = None) -> int:
    from ..benchmark.cli import main as benchmark
    return run_command(lambda: benchmark(argv) and None)
