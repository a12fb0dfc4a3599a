"""Training: the loop (``loop.main``: the original's recipe), the optimizer
(``optim``), the loss and its class weights (``loss``), the data stream
(``stream``), checkpoints and resume (``resume``, ``state``), the metrics file /
TensorBoard / validation schedule / best checkpoint / early stopping
(``monitor``), curves (``curves``) and torch.distributed helpers
(``distributed``)."""
from .loop import (DeviceError, NonFiniteLossError, Run, TrainSummary, checkpoint, end_epoch,
                   main, precise_bn, select_devices, stop_early, train_one_epoch)
from .optim import (adjust_learning_rate, create_optimizers, group_weight, make_sgd, poly_lr)
from .stream import DataNotFoundError, check_dataset

__all__ = ["DataNotFoundError", "DeviceError", "NonFiniteLossError", "Run", "TrainSummary",
           "checkpoint", "end_epoch", "main", "precise_bn", "select_devices", "stop_early",
           "train_one_epoch",
           "adjust_learning_rate", "create_optimizers", "group_weight", "make_sgd", "poly_lr",
           "check_dataset"]
