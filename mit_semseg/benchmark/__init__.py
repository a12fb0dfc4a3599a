"""Speed and memory, measured: ``python -m mit_semseg benchmark`` (the command,
:mod:`mit_semseg.commands.benchmark`, parses the flags into
:class:`BenchmarkOptions` and prints the results of :func:`run_benchmark`).

Modules: options (the settings and presets), run (their checks, the sections in order),
harness (timing, memory, the parity weight rule, the original's procedures,
pairs, scenes), flops, inference, training, testpy, data, metrics, slide (the
cost of slide mode's stitching, opt-in), report. Measuring side by side with
the original (``--compare-original``) uses the repository's
``tools/original_worker.py`` and ``tools/cpu_shim.py``, which are not
installed with the package.
"""
from .flops import count_gflops, matmul_peak
from .harness import MemoryProbe, original_inference, rule_tensor, write_rule_checkpoint
from .options import BenchmarkError, BenchmarkOptions
from .report import format_report
from .run import resolve_options, run_benchmark

__all__ = ["BenchmarkOptions", "BenchmarkError", "resolve_options", "run_benchmark",
           "rule_tensor", "count_gflops", "matmul_peak", "MemoryProbe", "original_inference",
           "format_report", "write_rule_checkpoint"]
