"""Section ``metrics``: the confusion-matrix metrics against the original's
``utils.intersectionAndUnion``, time and equality."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

from ..evaluation.metrics import SegmentationMetrics, intersectionAndUnion
from .harness import Bench, median, summary


def run_metrics(bench: Bench) -> None:
    """Section ``metrics``: ``utils.intersectionAndUnion`` vs the confusion-matrix
    metrics (numpy and torch inputs) on ``--metrics-size`` maps, same results."""
    a = bench.options
    n, k = a.metrics_size, a.num_class
    rng = np.random.default_rng(0)
    label = rng.integers(-1, k, (n, n)).astype(np.int64)
    pred = np.where(rng.random((n, n)) < 0.7, np.maximum(label, 0),
                    rng.integers(0, k, (n, n))).astype(np.int64)
    out: dict[str, Any] = {"size": n, "num_class": k}

    def timed(fn: Callable[[], Any]) -> tuple[list[float], Any]:
        result = fn()
        times = []
        for _ in range(max(1, a.runs)):
            t = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t)
        return times, result

    t_iu, (inter, union) = timed(lambda: intersectionAndUnion(pred, label, k))
    out["intersectionAndUnion_ms"] = summary([1e3 * t for t in t_iu])

    def confusion(p: Any, l: Any) -> Any:
        m = SegmentationMetrics(k)
        m.update(p, l)
        return m

    t_np, m_np = timed(lambda: confusion(pred, label))
    t_pt, _ = timed(lambda: confusion(torch.from_numpy(pred), torch.from_numpy(label)))
    out["confusion_numpy_ms"] = summary([1e3 * t for t in t_np])
    out["confusion_torch_ms"] = summary([1e3 * t for t in t_pt])
    out["speedup_numpy"] = median(t_iu) / median(t_np)
    out["speedup_torch"] = median(t_iu) / median(t_pt)
    out["equal_results"] = bool(np.array_equal(m_np.intersection, inter)
                                and np.array_equal(m_np.union, union))
    bench.results["metrics"] = out
