"""Evaluation: metrics from a confusion matrix (``metrics``), evaluation of a
checkpoint in one or several processes (``evaluator``) and what it reports
(``report``)."""
from .evaluator import evaluate, evaluate_multiprocess, validate
from .metrics import SegmentationMetrics, confusion_counts
from .report import report_path, results_path, write_report

__all__ = ["evaluate", "evaluate_multiprocess", "validate", "SegmentationMetrics",
           "confusion_counts", "results_path", "report_path", "write_report"]
