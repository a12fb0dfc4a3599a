"""Training: ``main`` (``loop``: set up a run from the config) and the ``Trainer``
(``trainer``: steps; everything around them is a hook in ``hooks``: learning-rate
schedule, precise BN, checkpoints and resume, validation and the best
checkpoint, early stop, metrics file and TensorBoard, EMA), the optimizers and
the schedule (``optim``), the loss and its class weights (``loss``, ``losses``),
the data streams (``stream``, ``original_stream``), checkpoint files
(``resume``, ``state``), the metrics records (``monitor``), curves (``curves``)
and torch.distributed helpers (``distributed``)."""
from .hooks import HOOKS, build_hooks, precise_bn, register_hook
from .loop import DeviceError, build_trainer, main, select_devices
from .losses import register_loss
from .optim import (adjust_learning_rate, create_optimizers, group_weight, make_sgd, poly_lr,
                    register_optimizer)
from .stream import DataNotFoundError, check_dataset
from .trainer import HookBase, NonFiniteLossError, StepResult, Trainer, TrainSummary

__all__ = ["DataNotFoundError", "DeviceError", "NonFiniteLossError", "TrainSummary",
           "Trainer", "HookBase", "StepResult", "HOOKS", "register_hook", "build_hooks",
           "build_trainer", "main", "precise_bn", "select_devices",
           "adjust_learning_rate", "create_optimizers", "group_weight", "make_sgd", "poly_lr",
           "register_optimizer", "register_loss", "check_dataset"]
