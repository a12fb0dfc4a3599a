"""Everything about data before it meets a network: reading images and
annotations (``io``), class tables and colours (``classes``), the
preprocessing rule (``transforms``), the odgt datasets (``datasets``), dataset
tools (``tools``: ``python -m mit_semseg datatools``) and the synthetic demo set
(``synthetic``).

The ADE20K tables (``color150.csv``/``.mat``, ``object150_info.csv``) ship
as ``mit_semseg/data/ade20k/`` (the repository's ``data/`` folder).
"""
from .classes import ClassTable, ClassTableError, class_colors, class_names, class_table
from .datasets import BaseDataset, TestDataset, TrainDataset, ValDataset, worker_init_fn
from .io import DatasetError, LabelFormat, read_annotation, read_image
from .transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocess, normalize

__all__ = ["ClassTable", "ClassTableError", "class_colors", "class_names", "class_table",
           "BaseDataset", "TestDataset", "TrainDataset", "ValDataset", "worker_init_fn",
           "DatasetError", "LabelFormat", "read_annotation", "read_image", "IMAGENET_MEAN",
           "IMAGENET_STD", "Preprocess", "normalize"]
