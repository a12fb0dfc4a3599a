"""Model folders moved to :mod:`mit_semseg.models.folder` (owned by the model object,
``SegmentationNetwork.save_pretrained`` / ``from_pretrained``); this path re-exports them
for code written against earlier versions."""
from ..models.folder import (CARD_FILE, CLASSES_FILE, EVALUATION_FILE, PREPROCESSING_FILE,  # noqa: F401
                             ModelFolderError, PretrainedFolder, model_card, open_pretrained,
                             save_pretrained)

__all__ = ["ModelFolderError", "PretrainedFolder", "CLASSES_FILE", "PREPROCESSING_FILE",
           "EVALUATION_FILE", "CARD_FILE", "save_pretrained", "open_pretrained", "model_card"]
