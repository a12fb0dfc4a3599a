"""Inference: the engine that turns photos into labels (``engine``), its
backends (``backends``: PyTorch, onnxruntime), score fusion (``fusion``),
sliding windows (``slide``) and the Python API (``segmenter``)."""
from ..checkpoints.files import CheckpointNotFoundError, checkpoint_paths
from ..runtime.devices import DeviceUnavailableError, resolve_device
from .engine import DEFAULT_BAND_BYTES, InferenceEngine, Prediction, engine_from_config
from .segmenter import ClassShare, Segmenter, describe_labels
from .slide import SlideWindow

__all__ = ["InferenceEngine", "Prediction", "Segmenter", "ClassShare", "SlideWindow",
           "CheckpointNotFoundError", "DeviceUnavailableError", "resolve_device",
           "checkpoint_paths", "engine_from_config", "describe_labels",
           "DEFAULT_BAND_BYTES"]
