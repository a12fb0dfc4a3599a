"""Speed and memory, measured: ``python -m mit_semseg.benchmark`` (see cli.py).

Modules: harness (timing, memory, the parity weight rule, the original's
procedures, pairs, scenes), original_worker (the original implementation in
a worker process), flops, inference, training, testpy, data, metrics,
report, cli.
"""
from .cli import build_parser, main
from .flops import count_gflops, matmul_peak
from .harness import MemoryProbe, original_inference, rule_tensor
from .report import format_report

__all__ = ["main", "build_parser", "rule_tensor", "count_gflops", "matmul_peak", "MemoryProbe",
           "original_inference", "format_report"]
