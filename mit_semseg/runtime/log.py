"""The "Logger" logger of the scripts and a running-average meter."""
from __future__ import annotations

import logging
import os
import sys

__all__ = ["setup_logger", "AverageMeter"]


def setup_logger(distributed_rank: int = 0, filename: str | None = "log.txt") -> logging.Logger:
    """The "Logger" logger: stdout, plus ``filename`` when given; silent on rank > 0.

    Calling it again replaces the handlers it added before (no duplicate lines).
    """
    logger = logging.getLogger("Logger")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    if distributed_rank > 0:
        logger.addHandler(logging.NullHandler())
        return logger
    fmt = logging.Formatter("[%(asctime)s %(levelname)s %(filename)s line %(lineno)d "
                            "%(process)d] %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(stream=sys.stdout)]
    if filename:
        folder = os.path.dirname(filename)
        if folder:
            os.makedirs(folder, exist_ok=True)
        handlers.append(logging.FileHandler(filename))
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    return logger


class AverageMeter:
    """Running weighted average: ``update(val, weight)``; ``average()``, ``value()``."""

    def __init__(self) -> None:
        self.initialized = False
        self.val = self.avg = self.sum = self.count = None

    def initialize(self, val: float, weight: float) -> None:
        self.val, self.avg, self.sum, self.count = val, val, val * weight, weight
        self.initialized = True

    def update(self, val: float, weight: float = 1) -> None:
        if not self.initialized:
            self.initialize(val, weight)
        else:
            self.add(val, weight)

    def add(self, val: float, weight: float) -> None:
        self.val = val
        self.sum += val * weight
        self.count += weight
        self.avg = self.sum / self.count

    def value(self) -> float:
        return self.val

    def average(self) -> float:
        return self.avg
