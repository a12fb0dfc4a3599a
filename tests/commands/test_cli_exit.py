"""utils.exit_now: the command-line scripts' exit without the interpreter's
teardown still delivers buffered output, atexit work and the exit status."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SCRIPT = """
import atexit, sys
from mit_semseg.runtime.process import exit_now
atexit.register(lambda: print("atexit ran"))
print("buffered", end="")
sys.stderr.write("err")
exit_now(3)
print("not reached")
"""


def _run(tmp_path, **env):
    script = tmp_path / "s.py"
    script.write_text(_SCRIPT)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT, **env}, timeout=120)


def test_output_atexit_and_status_survive(tmp_path):
    res = _run(tmp_path)
    assert res.returncode == 3
    assert res.stdout == "bufferedatexit ran\n"  # a pipe: block-buffered until flushed
    assert res.stderr == "err"


def test_plain_exit_when_switched_off(tmp_path):
    res = _run(tmp_path, MIT_SEMSEG_FAST_EXIT="0")
    assert (res.returncode, res.stdout, res.stderr) == (3, "bufferedatexit ran\n", "err")
