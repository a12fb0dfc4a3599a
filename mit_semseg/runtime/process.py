"""Process-level settings and facts: CPU count, DataLoader workers, the glibc
allocator, returning memory to the system, and a fast exit for scripts."""
from __future__ import annotations

import os
import platform
import sys

__all__ = ["cpu_count", "cpu_flags", "cpu_name", "loader_workers", "set_threads", "exit_now", "tune_allocator",
           "allocator_state", "release_memory"]


def cpu_count() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def loader_workers(requested: int) -> int:
    """DataLoader worker processes to start: ``requested`` capped at :func:`cpu_count` (>= 0)."""
    return max(0, min(int(requested), cpu_count()))


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    """The CPU's model name, or the platform's word for it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "this CPU"


def set_threads(count: int) -> int:
    """The one thread policy: ``count`` intra-op CPU threads for this process
    (``TRAIN/VAL/TEST.num_threads``; 0 keeps PyTorch's default). Returns the count
    before the call."""
    import torch
    before = torch.get_num_threads()
    if int(count) < 0:
        raise ValueError(f"thread count must be >= 0 (0 = PyTorch's default), got {count}")
    if int(count) > 0:
        torch.set_num_threads(int(count))
    return before


def exit_now(code: int | None = 0) -> None:
    """End a command-line script with exit status ``code`` without the
    interpreter's teardown, which takes about 0.5 s once torch is loaded (its
    modules and extension state are dismantled one by one).

    Output is flushed and the atexit handlers run first (logging, multiprocessing
    children, tqdm), then ``os._exit``. Under a debugger, tracer or profiler
    (``sys.gettrace()`` / ``sys.getprofile()`` set, e.g. ``python -m cProfile``),
    or with ``MIT_SEMSEG_FAST_EXIT=0``, it is plain ``sys.exit(code)``.
    """
    if (sys.gettrace() is not None or sys.getprofile() is not None
            or os.environ.get("MIT_SEMSEG_FAST_EXIT", "1") == "0"):
        sys.exit(code)
    import atexit

    def _flush() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass

    _flush()
    atexit._run_exitfuncs()
    _flush()
    os._exit(0 if code is None else int(code))


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc <malloc.h>
_ALLOCATOR_TUNED: bool | None = None


def tune_allocator() -> bool:
    """Make glibc's malloc keep freed memory for reuse in this process.

    A training or inference step frees and re-allocates the same large
    activation buffers every time; with glibc's defaults most of them are
    mmap'ed and returned to the OS, so each step pays the page faults of
    touching them again (15-20% of a MobileNetV2 training step on 2 cores).
    This raises the mmap threshold to glibc's 32 MiB maximum and stops
    trimming the heap: resident memory stays near the peak instead of falling
    between steps, but the peak is not higher. Called by the command-line
    entry points (train, eval, eval_multipro, test, benchmark), not on import.

    A no-op returning False off glibc (macOS, Windows, musl) or when the
    environment variable ``MIT_SEMSEG_MALLOC`` is ``system``; True once tuned.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED is not None:
        return _ALLOCATOR_TUNED
    _ALLOCATOR_TUNED = False
    if os.environ.get("MIT_SEMSEG_MALLOC", "").strip().lower() == "system":
        return False
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import platform
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1
              and libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1
              and libc.mallopt(_M_TOP_PAD, 64 * 1024 * 1024) == 1)
    except (OSError, AttributeError):
        return False
    _ALLOCATOR_TUNED = bool(ok)
    return _ALLOCATOR_TUNED


def allocator_state() -> str:
    """One line for logs and benchmark headers: how malloc is set up."""
    if _ALLOCATOR_TUNED:
        return "glibc malloc tuned to keep freed memory (MIT_SEMSEG_MALLOC=system: off)"
    if os.environ.get("MIT_SEMSEG_MALLOC", "").strip().lower() == "system":
        return "system malloc defaults (MIT_SEMSEG_MALLOC=system)"
    return "system malloc defaults"


def release_memory() -> bool:
    """Hand freed heap memory back to the system (glibc ``malloc_trim``); False where
    that is not available. For long-lived servers after a burst of large requests."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False
