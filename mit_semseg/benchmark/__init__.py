"""Speed and memory, measured: ``python -m mit_semseg benchmark`` (see cli.py).

Modules: harness (timing, memory, the parity weight rule, the original's
procedures, pairs, scenes), flops, inference, training, testpy, data,
metrics, slide (the cost of slide mode's stitching, opt-in), report, cli.
Measuring side by side with the original (``--compare-original``) uses the repository's ``tools/original_worker.py``
and ``tools/cpu_shim.py``, which are not installed with the package.
"""
from .cli import build_parser, main
from .flops import count_gflops, matmul_peak
from .harness import MemoryProbe, original_inference, rule_tensor, write_rule_checkpoint
from .report import format_report

__all__ = ["main", "build_parser", "rule_tensor", "count_gflops", "matmul_peak", "MemoryProbe",
           "original_inference", "format_report", "write_rule_checkpoint"]
