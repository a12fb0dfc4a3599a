"""utils.tune_allocator: on by default in the command-line mains, off with
MIT_SEMSEG_MALLOC=system, a no-op off glibc."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

_PROBE = ("from mit_semseg.runtime.process import tune_allocator, allocator_state; "
          "print(tune_allocator(), tune_allocator(), allocator_state(), sep='|')")


def _probe(**env: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         check=True, env={**os.environ, **env},
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    return out.stdout.strip().split("|")


def test_switched_off_by_environment():
    first, second, state = _probe(MIT_SEMSEG_MALLOC="system")
    assert (first, second) == ("False", "False")
    assert "MIT_SEMSEG_MALLOC=system" in state


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc only")
def test_tuned_once_on_glibc():
    first, second, state = _probe(MIT_SEMSEG_MALLOC="")
    assert (first, second) == ("True", "True")
    assert state.startswith("glibc malloc tuned")
