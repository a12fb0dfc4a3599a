"""Evaluation: metrics from a confusion matrix (``metrics``), the one loop that
runs the engine over a dataset and feeds consumers (``loop``, ``consumers``),
evaluation of a checkpoint in one or several processes (``evaluator``) and
what it reports (``report``, ``html_report``, ``panels``)."""
from .evaluator import evaluate, evaluate_multiprocess, validate
from .loop import Consumer, EvalSample, run_evaluation
from .metrics import SegmentationMetrics, confusion_counts
from .report import report_path, results_path, write_report

__all__ = ["evaluate", "evaluate_multiprocess", "validate", "SegmentationMetrics",
           "confusion_counts", "results_path", "report_path", "write_report", "Consumer",
           "EvalSample", "run_evaluation"]
