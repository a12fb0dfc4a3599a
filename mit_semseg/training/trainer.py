"""The trainer: runs training steps; everything else is a hook.

``Trainer.train()`` runs epochs of ``TRAIN.epoch_iters`` steps. A step draws
this process's batches, runs forward and backward on every device it owns and
updates the weights (``run_step``). What happens around the steps comes from
hooks (:class:`HookBase`), each in its own module of
:mod:`mit_semseg.training.hooks` and chosen by the config: the learning-rate
schedule, precise BN, checkpoints and resume, validation and the best
checkpoint, early stopping, the metrics file and TensorBoard. A new hook is one
new module that registers itself (``hooks.register_hook``) and is named in
``TRAIN.hooks``.

Events, in the order they fire (every rank fires every event; a hook that must
write files checks ``trainer.env.is_main``)::

    before_train
      before_epoch
        before_step  -> run_step -> after_step          (epoch_iters times)
        before_checkpoint -> the checkpoint is written   (when a hook asks)
      after_epoch
    after_train

Hooks run in order of their ``priority`` (lower first; ties keep the order
they were added in).
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, ContextManager, Iterable, Iterator

import torch
import torch.nn as nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from yacs.config import CfgNode

from ..errors import MitSemsegError
from ..models import SegmentationModule, SegmentationNetwork
from ..nn import UserScatteredDataParallel
from ..runtime.log import AverageMeter
from . import distributed as D
from .state import restore_rng_state

__all__ = ["HookBase", "Trainer", "StepResult", "TrainSummary", "NonFiniteLossError",
           "PRECISIONS"]

logger = logging.getLogger("Logger")

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(MitSemsegError, RuntimeError):
    """The loss became NaN or infinite; training stopped before the update."""


class HookBase:
    """Something that happens around the training steps. Override the events you
    need; each gets the trainer. ``priority``: lower runs first."""

    priority: int = 60

    def before_train(self, trainer: "Trainer") -> None:
        """Once, before the first step (after the network, optimizers and data are
        made, before the data stream opens): restore state, open files."""

    def before_epoch(self, trainer: "Trainer") -> None:
        """At the start of every epoch (``trainer.epoch``)."""

    def before_step(self, trainer: "Trainer") -> None:
        """Before every step's forward (``trainer.global_iter`` is the step's 0-based
        iteration): set learning rates, record in ``trainer.step``."""

    def after_step(self, trainer: "Trainer") -> None:
        """After the optimizer update; ``trainer.step`` holds its loss, accuracy, rates
        and times, ``trainer.global_iter`` counts it."""

    def before_checkpoint(self, trainer: "Trainer") -> None:
        """Right before a checkpoint is written (mid-epoch or at an epoch's end)."""

    def after_epoch(self, trainer: "Trainer") -> None:
        """After an epoch's last step; fill ``trainer.record`` or set ``trainer.stop``.
        Every rank runs it: collectives are allowed when every rank makes them."""

    def after_train(self, trainer: "Trainer") -> None:
        """Once at the end (also after a run that had nothing to do): close files."""


@dataclass
class StepResult:
    """What the last step did: loss and pixel accuracy (means over every device and
    rank), learning rates (``lrs``, one per optimizer; set by the schedule hook
    before the step) and times in seconds."""

    loss: float = math.nan
    acc: float = math.nan
    lrs: tuple[float, ...] = ()
    data_time: float = 0.0
    iter_time: float = 0.0


@dataclass
class TrainSummary:
    """What ``main`` returns: the history, the newest state file written, the
    global iterations done, whether ``TRAIN.early_stop`` ended the run and the
    best validated epoch (None without validation; rank 0 only)."""

    history: dict
    last_checkpoint: str
    global_iter: int
    stopped_early: bool = False
    best_epoch: int | None = None


@dataclass
class Trainer:
    """One training run: the network, its training module and wrapper, the
    optimizers, the data and the hooks, and where the run is.

    ``module``: the network's encoder and decoder with the loss
    (``SegmentationModule``); ``model``: ``module`` or its DataParallel / DDP
    wrapper. ``batches``: the data stream (one list of ``draws_per_iter`` batches
    per step: ``per_iter`` times ``TRAIN.accumulate``), opened by ``train``.
    ``storage``: what hooks share (e.g. the best validation so far; the EMA's
    ``eval_network``). ``record``: the epoch's record, filled by the hooks of
    ``after_epoch`` and written by the metrics hook.
    """

    cfg: CfgNode
    env: D.DistEnv
    device: torch.device
    gpu_ids: list[int]
    network: SegmentationNetwork
    module: SegmentationModule
    model: nn.Module
    optimizers: tuple[torch.optim.Optimizer, ...]
    scaler: Any
    dataset: Any
    stream: Any  # stream.TrainStream: opens the batches of a range of iterations
    point: Any = None  # resume.ResumePoint, or None for a new run
    hooks: list[HookBase] = field(default_factory=list)
    history: dict = field(default_factory=lambda: {"train": {"epoch": [], "loss": [], "acc": []}})
    global_iter: int = 0
    epoch: int = 0
    iter: int = 0  # 0-based step within the epoch (during before_step .. after_step)
    first_epoch: int = 1
    start_iter: int = 0
    last_checkpoint: str = ""
    stop: bool = False
    stopped_early: bool = False
    step: StepResult = field(default_factory=StepResult)
    storage: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict)
    batches: Iterator[list] | None = None

    # ------------------------------------------------------------------ setup
    def register_hooks(self, hooks: Iterable[HookBase]) -> None:
        """Add ``hooks`` (kept sorted by priority, stable)."""
        self.hooks = sorted([*self.hooks, *hooks], key=lambda h: h.priority)

    def hook(self, kind: type) -> Any:
        """The first registered hook of class ``kind`` (None when absent)."""
        return next((h for h in self.hooks if isinstance(h, kind)), None)

    def fire(self, event: str) -> None:
        for h in self.hooks:
            getattr(h, event)(self)

    @property
    def per_iter(self) -> int:
        """Batches drawn per iteration by this process (one per device)."""
        return max(1, len(self.gpu_ids))

    @property
    def accumulate(self) -> int:
        """Batches per device whose gradients one optimizer step sums (``TRAIN.accumulate``)."""
        return int(self.cfg.TRAIN.get("accumulate", 1))

    @property
    def draws_per_iter(self) -> int:
        """Batches the data stream hands this process per iteration: ``per_iter`` for
        each of the ``accumulate`` micro-steps."""
        return self.per_iter * self.accumulate

    @property
    def epoch_iters(self) -> int:
        return int(self.cfg.TRAIN.epoch_iters)

    @property
    def num_epoch(self) -> int:
        return int(self.cfg.TRAIN.num_epoch)

    def autocast(self) -> ContextManager:
        dtype = PRECISIONS[self.cfg.TRAIN.precision]
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # ------------------------------------------------------------------ steps
    def forward(self, batches: list, model: nn.Module | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, acc) of one iteration's batches, averaged over this process's devices."""
        model = self.model if model is None else model
        if isinstance(model, UserScatteredDataParallel) and self.gpu_ids:
            loss, acc = model(batches)
        else:
            feed = {k: v.to(self.device, non_blocking=True) for k, v in batches[0].items()}
            loss, acc = model(feed)
        return loss.mean(), acc.mean()

    def run_step(self, batches: list) -> tuple[float, float]:
        """Forward, backward and the optimizer steps on ``batches``; returns the loss and
        accuracy averaged over the ranks. Raises :class:`NonFiniteLossError` (on every
        rank) before the update when the loss is NaN or infinite. With ``TRAIN.accumulate``
        K > 1, ``batches`` holds K groups of ``per_iter`` (:meth:`_accumulated_step`)."""
        if self.accumulate > 1:
            return self._accumulated_step(batches)
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss, acc = self.forward(batches)
        # Mean over ranks; also a NaN on one rank stops every rank at the same iteration.
        loss_value, acc_value = D.all_reduce_mean(
            torch.stack([loss.detach().float(), acc.detach().float()])).tolist()
        self._check_finite(loss_value)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            for optimizer in self.optimizers:
                self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            for optimizer in self.optimizers:
                optimizer.step()
        return loss_value, acc_value

    def _accumulated_step(self, batches: list) -> tuple[float, float]:
        """One optimizer step over K = ``accumulate`` micro-steps of ``per_iter`` batches
        each: the gradient is that of the mean of the K losses (each micro-step's loss
        divided by K, its gradients summed; GradScaler's scale over all, its step and
        update once). BatchNorm normalises and updates its statistics per micro-step.
        Under DDP gradients are all-reduced with the last micro-step only. Returns the
        mean loss and accuracy of the micro-steps over the ranks; a NaN or infinite loss
        stops before the update."""
        k, n = self.accumulate, self.per_iter
        if len(batches) != k * n:
            raise ValueError(f"accumulation of {k} x {n} batches got {len(batches)}")
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        losses, accs = [], []
        for j in range(k):
            last = j == k - 1
            sync = self.model.no_sync() if not last and isinstance(
                self.model, nn.parallel.DistributedDataParallel) else nullcontext()
            with sync:
                with self.autocast():
                    loss, acc = self.forward(batches[j * n:(j + 1) * n])
                share = loss / k
                (self.scaler.scale(share) if self.scaler is not None else share).backward()
            losses.append(loss.detach().float())
            accs.append(acc.detach().float())
        loss_value, acc_value = D.all_reduce_mean(
            torch.stack([torch.stack(losses).mean(), torch.stack(accs).mean()])).tolist()
        self._check_finite(loss_value)
        for optimizer in self.optimizers:
            if self.scaler is not None:
                self.scaler.step(optimizer)
            else:
                optimizer.step()
        if self.scaler is not None:
            self.scaler.update()
        return loss_value, acc_value

    def _check_finite(self, loss_value: float) -> None:
        if not math.isfinite(loss_value):
            where = self.last_checkpoint or "none yet"
            raise NonFiniteLossError(
                f"loss is {loss_value} at epoch {self.epoch}, iteration {self.iter}/"
                f"{self.epoch_iters} (global iteration {self.global_iter}); training stopped "
                f"before this update. Last checkpoint written: {where}. Lower "
                f"TRAIN.lr_encoder/lr_decoder or check the data, then resume from that "
                f"checkpoint (train.py --resume PATH).")

    def checkpoint(self, epoch: int, iteration: int) -> str:
        """``before_checkpoint`` hooks (precise BN), then the checkpoint after
        ``iteration`` iterations of ``epoch``; returns the state file's path. Every
        rank must call it."""
        from .resume import write_checkpoint
        self.fire("before_checkpoint")
        return write_checkpoint(self, epoch, iteration)

    # ------------------------------------------------------------------ the loop
    def train_epoch(self, epoch: int, start_iter: int = 0) -> None:
        """Steps ``start_iter..epoch_iters-1`` of ``epoch`` (1-based), with their hooks,
        a progress bar, a log line every ``TRAIN.disp_iter`` steps and the history."""
        cfg = self.cfg
        epoch_iters, disp_iter = self.epoch_iters, max(1, int(cfg.TRAIN.disp_iter))
        assert self.batches is not None
        self.model.train(not cfg.TRAIN.fix_bn)
        batch_time, data_time, ave_loss, ave_acc = (AverageMeter() for _ in range(4))
        bar = tqdm(total=epoch_iters, initial=start_iter, desc=f"Epoch {epoch}/{self.num_epoch}",
                   unit="it", dynamic_ncols=True, disable=None if self.env.is_main else True)
        tic = time.perf_counter()
        try:
            for i in range(start_iter, epoch_iters):
                batches = next(self.batches)
                data_time.update(time.perf_counter() - tic)
                self.iter = i
                self.global_iter = i + (epoch - 1) * epoch_iters
                self.step = StepResult(data_time=data_time.value())
                self.fire("before_step")
                loss_value, acc_value = self.run_step(batches)
                self.global_iter += 1
                batch_time.update(time.perf_counter() - tic)
                self.step.loss, self.step.acc = loss_value, acc_value
                self.step.iter_time = batch_time.value()
                ave_loss.update(loss_value)
                ave_acc.update(acc_value * 100)
                lr = self.step.lrs[0] if self.step.lrs else math.nan
                bar.update(1)
                bar.set_postfix(loss=f"{ave_loss.average():.4f}", acc=f"{ave_acc.average():.2f}",
                                lr=f"{lr:.2e}", refresh=False)
                if i % disp_iter == 0:
                    lrs = tuple(self.step.lrs) + (math.nan,) * max(0, 2 - len(self.step.lrs))
                    logger.info("Epoch: [%d][%d/%d], Time: %.2f, Data: %.2f, lr_encoder: %.6f, "
                                "lr_decoder: %.6f, Accuracy: %4.2f, Loss: %.6f",
                                epoch, i, epoch_iters, batch_time.average(), data_time.average(),
                                lrs[0], lrs[1], ave_acc.average(), ave_loss.average())
                    train_hist = self.history["train"]
                    train_hist["epoch"].append(epoch - 1 + i / epoch_iters)
                    train_hist["loss"].append(loss_value)
                    train_hist["acc"].append(acc_value)
                self.fire("after_step")
                tic = time.perf_counter()
        finally:
            bar.close()
        if ave_loss.initialized:
            logger.info("Epoch %d done: mean loss %.6f, mean accuracy %.2f%%, %.2f s/iteration",
                        epoch, ave_loss.average(), ave_acc.average(), batch_time.average())

    def train(self) -> TrainSummary:
        """Run the epochs from the resume point (or the start) with the hooks."""
        self.fire("before_train")
        if self.first_epoch > self.num_epoch:
            logger.info("Nothing to do: %d of %d epochs already trained", self.first_epoch - 1,
                        self.num_epoch)
            self.fire("after_train")
            return self.summary()
        if self.stop:  # a hook decided before the first step (a run that had stopped early)
            self.fire("after_train")
            return self.summary()
        self.batches = self.stream.open(self, self.global_iter)
        self._restore_rng()
        # log lines go through tqdm.write so they do not break the progress bar
        with logging_redirect_tqdm([logger]) if self.env.is_main else nullcontext():
            for epoch in range(self.first_epoch, self.num_epoch + 1):
                self.epoch = epoch
                self.record = {}
                self.fire("before_epoch")
                self.train_epoch(epoch, self.start_iter if epoch == self.first_epoch else 0)
                self.iter = self.epoch_iters
                self.fire("after_epoch")
                if self.stop:
                    break
        self.batches = None  # stops the loader workers
        self.fire("after_train")
        logger.info("Training Done!")
        return self.summary()

    def _restore_rng(self) -> None:
        """After the stream is opened: the random states of the resume point (each rank
        its own; rank 0's everywhere when the world size changed)."""
        states = self.storage.pop("resume_rng", None)
        if states is None:
            return
        if len(states) != self.env.world_size:
            logger.warning("%s holds random states of %d ranks, this run has %d: rank 0's are "
                           "used everywhere", self.point.source, len(states), self.env.world_size)
        restore_rng_state(states[self.env.rank] if len(states) == self.env.world_size
                          else states[0])

    def summary(self) -> TrainSummary:
        best = self.storage.get("best")
        return TrainSummary(self.history, self.last_checkpoint, self.global_iter,
                            self.stopped_early, best["epoch"] if best else None)
