"""mit_semseg: semantic segmentation / scene parsing on ADE20K (PyTorch)."""

__version__ = "2.0.0"
