"""What an evaluation pass feeds (``evaluation.loop.Consumer``), one module each:
the metrics (``metrics``: confusion matrix, and per-image statistics when asked),
the worst images' panels (``worst``) and the image | ground truth | prediction
PNGs (``visualize``)."""
from .metrics import MetricsConsumer
from .visualize import VisualizationWriter
from .worst import WorstImagesConsumer

__all__ = ["MetricsConsumer", "WorstImagesConsumer", "VisualizationWriter"]
