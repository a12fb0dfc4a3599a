"""The original's module path ``mit_semseg.utils`` (re-exports only).

Each name lives where its concern does: logging and meters in
:mod:`mit_semseg.runtime`, devices in :mod:`mit_semseg.runtime.devices`, metrics
in :mod:`mit_semseg.evaluation.metrics`, colours and class tables in
:mod:`mit_semseg.data.classes`, file search in :mod:`mit_semseg.data.io`.
"""
from .data.classes import (ade20k_colors, ade20k_names, class_colors, class_names,  # noqa: F401
                           colorEncode, unique)
from .data.io import IMAGE_EXTENSIONS, find_recursive  # noqa: F401
from .evaluation.metrics import accuracy, intersectionAndUnion  # noqa: F401
from .runtime.devices import (REGEX, NotSupportedCliException, parse_devices,  # noqa: F401
                              process_range)
from .runtime.log import AverageMeter, setup_logger  # noqa: F401
from .runtime.process import (allocator_state, cpu_count, exit_now, loader_workers,  # noqa: F401
                              tune_allocator)

__all__ = ["AverageMeter", "NotSupportedCliException", "REGEX", "accuracy", "colorEncode",
           "find_recursive", "intersectionAndUnion", "parse_devices", "process_range",
           "setup_logger", "unique"]
