"""Deployment: export a trained encoder + decoder as one ONNX graph with its class
table and preprocessing in the metadata (``onnx``; ``python -m mit_semseg export``).
The onnxruntime backend that runs such a file is :mod:`mit_semseg.inference.backends`."""
from .onnx import (DEFAULT_OPSET, DEFAULT_TOLERANCE, EXPORTERS, ExportPool, ScoreNetwork,
                   build_network, compare_onnx, export_onnx, exportable, metadata,
                   read_metadata)

__all__ = ["ExportPool", "ScoreNetwork", "exportable", "metadata", "export_onnx",
           "read_metadata", "compare_onnx", "EXPORTERS", "DEFAULT_OPSET", "DEFAULT_TOLERANCE",
           "build_network"]
