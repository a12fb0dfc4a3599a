"""The models a demo server offers, and the one-at-a-time runner of each.

``WebModel`` is a ``Segmenter`` plus what the page needs to know about it
(name, configured test scales). ``Runner`` runs one job at a time per model in
its own worker thread (never on the event loop) and admits at most
``1 + queue`` jobs; one more is refused with ``Busy``; when its last job ends
it runs ``on_idle`` in that thread (the server gives memory back there).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..config import ConfigError, load_cfg
from ..inference import Segmenter

__all__ = ["WebModel", "Runner", "Busy", "parse_scales"]

MAX_SCALES = 8


@dataclass
class WebModel:
    """``img_sizes``: the model's multi-scale short sides (DATASET.imgSizes, or an
    exported file's own with TEST.onnx_trust file); ``max_size``: imgMaxSize."""
    name: str
    segmenter: Segmenter
    img_sizes: tuple[int, ...]
    max_size: int
    source: str = ""

    def __post_init__(self) -> None:
        self.img_sizes = tuple(int(s) for s in self.img_sizes)
        if not self.img_sizes:
            raise ConfigError(f"model {self.name!r}: DATASET.imgSizes is empty")

    @classmethod
    def from_config(cls, config: str, *, checkpoint_dir: str | None = None,
                    opts: Sequence[str] = (), device: str = "auto",
                    name: str | None = None) -> "WebModel":
        """Load ``config`` (YAML path) with weights ``<checkpoint_dir or DIR>/
        {encoder,decoder}_<TEST.checkpoint>``, as test.py does."""
        cfg = load_cfg(config, opts)
        seg = Segmenter.from_config(cfg, checkpoint_dir=checkpoint_dir, device=device)
        rule = seg.engine.preprocess  # the config's, or the model file's when it decides
        return cls(name or os.path.splitext(os.path.basename(config))[0], seg,
                   rule.img_sizes, rule.max_size,
                   source=os.path.abspath(checkpoint_dir or cfg.DIR))

    @property
    def num_class(self) -> int:
        return self.segmenter.engine.num_class

    @property
    def single_size(self) -> int:
        """Single-scale short side: the middle of the configured sizes (450 for ADE20K)."""
        return sorted(self.img_sizes)[len(self.img_sizes) // 2]

    def classes(self) -> list[dict[str, Any]]:
        """Every class: id (0-based), name, colour (#rrggbb)."""
        return [{"id": k, "name": self.segmenter.names.get(k, f"class_{k}"),
                 "color": hex_color(self.segmenter.colors[k])} for k in range(self.num_class)]


def hex_color(rgb: np.ndarray | Sequence[int]) -> str:
    r, g, b = (int(v) for v in rgb[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def parse_scales(value: str, model: WebModel) -> tuple[int, ...]:
    """``single`` -> (model.single_size,); ``multi`` -> the configured sizes;
    ``"300,450"`` -> those short sides. Raises ValueError with the valid forms."""
    text = (value or "single").strip().lower()
    if text == "single":
        return (model.single_size,)
    if text == "multi":
        return model.img_sizes
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        sizes = ()
    if not sizes or len(sizes) > MAX_SCALES or any(not 16 <= s <= 4096 for s in sizes):
        raise ValueError(f"scales must be 'single', 'multi' or 1 to {MAX_SCALES} comma-separated "
                         f"short sides between 16 and 4096, got {value!r}")
    return sizes


class Busy(RuntimeError):
    """The model's queue is full."""


class Runner:
    """Runs jobs for one model in a dedicated thread, one at a time; at most
    ``1 + queue`` jobs are admitted (running or waiting), further ones raise Busy.
    ``on_idle``: called in the worker thread after a job when no other job is
    admitted (after the job's answer is handed over; skipped if one arrived)."""

    def __init__(self, name: str, queue: int,
                 on_idle: Callable[[], None] | None = None) -> None:
        if queue < 0:
            raise ValueError(f"queue must be >= 0, got {queue}")
        self.capacity = 1 + int(queue)
        self.on_idle = on_idle
        self._admitted = 0
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"semseg-{name}")

    @property
    def pending(self) -> int:
        """Jobs running or waiting."""
        return self._admitted

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the worker thread; raises Busy at once when full. The slot is
        freed when the job ends, even if the request that waits for it is cancelled."""
        with self._lock:
            if self._admitted >= self.capacity:
                raise Busy(f"{self._admitted} requests running or queued")
            self._admitted += 1
        try:
            future = self._pool.submit(self._job, fn, args)
        except BaseException:
            self._release()
            raise
        return await asyncio.wrap_future(future)

    def _job(self, fn: Callable[..., Any], args: tuple) -> Any:
        try:
            return fn(*args)
        finally:
            if self._release() == 0 and self.on_idle is not None:
                try:  # queued behind this job: its answer is not delayed
                    self._pool.submit(self._idle)
                except RuntimeError:  # shut down
                    pass

    def _idle(self) -> None:
        if self._admitted == 0 and self.on_idle is not None:
            self.on_idle()

    def _release(self) -> int:
        with self._lock:
            self._admitted -= 1
            return self._admitted

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
