"""Training: the original toolkit's recipe in small functions (``main`` runs it).

The loop is here; the optimizer and learning rate in ``optim``, the data
stream in ``stream``, checkpoints and resuming in ``resume`` / ``state``, the
metrics file, TensorBoard, validation schedule, best checkpoint and early
stopping in ``monitor``, the loss and its class weights in ``loss``.

Recipe (kept from the original): one SGD optimizer for the encoder and one
for the decoder (momentum ``TRAIN.beta1``, weight decay ``TRAIN.weight_decay``
on conv/linear weights only), poly learning rate updated every iteration,
``NLLLoss(ignore_index=-1)`` (with class weights when ``TRAIN.class_weights``
or ``TRAIN.class_weight_rule`` ask for them, see ``loss``) plus
``TRAIN.deep_sup_scale`` times the auxiliary loss for ``*_deepsup`` decoders, ``TRAIN.epoch_iters`` iterations per epoch
whatever the batch size, and checkpoints ``encoder/decoder/history_epoch_N.pth``
in ``cfg.DIR`` (see :mod:`mit_semseg.training.state`).

Devices: the CPU, one GPU, several GPUs in one process
(``UserScatteredDataParallel``: every GPU gets its own batch), or one process
per device under ``torchrun`` (``DistributedDataParallel``; every rank draws
its own batches, so the global batch is world size x ``batch_size_per_gpu``).
BatchNorm statistics are synchronised over all devices in both multi-device
modes.

Data stream and exact resume: every rank's batches come from
``TrainDataset`` streams that are restarted at the start of every epoch, and
every ``TRAIN.checkpoint_every`` iterations inside an epoch, from a seed
derived from ``(TRAIN.seed, global iteration)`` (and the rank and loader
worker, mixed in by ``TrainDataset``). A run resumed from any checkpoint
therefore sees the same batches, learning rates, optimizer momenta and
random numbers as a run that never stopped, provided ``TRAIN.seed``,
``TRAIN.workers``, ``TRAIN.checkpoint_every``, ``TRAIN.epoch_iters``,
``TRAIN.num_epoch`` and the number of devices are unchanged.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from yacs.config import CfgNode

from ..accel import fast_training_
from ..checkpoints.download import configure_mirrors
from ..checkpoints.files import atomic_write_text, remove_stale_temporaries
from ..config import ConfigError
from ..data.classes import class_names
from ..data.datasets import TrainDataset
from ..errors import MitSemsegError
from ..evaluation import validate
from ..models import ModelBuilder, SegmentationModule
from ..models.weights import load_weights
from ..nn import UserScatteredDataParallel, patch_replication_callback
from ..runtime.devices import device_names
from ..runtime.log import AverageMeter, setup_logger
from ..runtime.process import allocator_state, loader_workers, tune_allocator
from . import distributed as D
from .loss import check_class_weights, class_weights, make_criterion
from .monitor import TrainingMonitor, parse_best_metric, validation_sizes
from .optim import adjust_learning_rate, create_optimizers
from .resume import ResumePoint, restart_source, restore, resume_point, write_checkpoint
from .state import restore_rng_state
from .stream import (BN_STREAM, TRAIN_STREAM, DataNotFoundError, check_dataset, derive_seed,
                     make_loader, segment_start)

__all__ = ["DataNotFoundError", "NonFiniteLossError", "DeviceError", "TrainSummary", "Run",
           "select_devices", "train_one_epoch", "precise_bn", "checkpoint", "end_epoch",
           "stop_early", "main"]

logger = logging.getLogger("Logger")

_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(MitSemsegError, RuntimeError):
    """The loss became NaN or infinite; training stopped before the update."""


class DeviceError(MitSemsegError, ValueError):
    """``--gpus`` asks for devices this machine or job does not have."""


# ============================================================================ devices

def select_devices(gpus: str | Sequence[str], env: D.DistEnv) -> tuple[torch.device, list[int]]:
    """The main device and the GPU ids to train on.

    ``gpus``: a ``--gpus`` string (``0-3``, ``0,2``, ``gpu1``, ``cpu``, ``auto`` =
    every visible GPU, else the CPU; see ``runtime.devices``) or a list of device names. Under torchrun
    each rank uses GPU ``LOCAL_RANK`` unless ``gpus`` is ``cpu``. Without CUDA,
    GPU requests fall back to the CPU with a warning.
    """
    if isinstance(gpus, str):
        spec = gpus.strip().lower()
        if spec == "auto":
            gpus = ["gpu0"] if torch.cuda.is_available() else ["cpu"]
            if torch.cuda.is_available() and not env.enabled:
                gpus = [f"gpu{i}" for i in range(torch.cuda.device_count())]
        else:
            gpus = device_names(spec)
    gpus = list(gpus)
    if "cpu" in gpus and len(gpus) > 1:
        raise DeviceError(f"--gpus mixes 'cpu' with GPUs ({','.join(gpus)}); choose one")
    if gpus == ["cpu"]:
        return torch.device("cpu"), []
    if not torch.cuda.is_available():
        warnings.warn(f"--gpus asks for {','.join(gpus)} but CUDA is not available: "
                      f"training on the CPU (pass --gpus cpu to silence this)", stacklevel=2)
        return torch.device("cpu"), []
    count = torch.cuda.device_count()
    if env.enabled:
        if env.local_rank >= count:
            raise DeviceError(f"LOCAL_RANK {env.local_rank} has no GPU: only {count} visible; "
                             f"start at most {count} processes per node (torchrun --nproc_per_node)")
        torch.cuda.set_device(env.local_rank)
        return torch.device("cuda", env.local_rank), [env.local_rank]
    ids = [int(g[3:]) for g in gpus]
    too_high = [i for i in ids if i >= count]
    if too_high:
        raise DeviceError(f"--gpus asks for GPU {too_high[0]} but only {count} are visible "
                         f"(ids 0-{count - 1}; CUDA_VISIBLE_DEVICES="
                         f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    torch.cuda.set_device(ids[0])
    return torch.device("cuda", ids[0]), ids


# ============================================================================ a run

@dataclass
class Run:
    """What the steps share."""

    cfg: CfgNode
    env: D.DistEnv
    device: torch.device
    gpu_ids: list[int]
    module: SegmentationModule
    model: nn.Module  # module, or its DataParallel / DDP wrapper
    optimizers: tuple[torch.optim.SGD, torch.optim.SGD]
    scaler: Any
    dataset: TrainDataset
    batches: Iterator[list] | None = None
    history: dict = field(default_factory=lambda: {"train": {"epoch": [], "loss": [], "acc": []}})
    global_iter: int = 0
    last_checkpoint: str = ""
    monitor: Any = None  # monitor.TrainingMonitor: metrics file, TensorBoard, validation

    @property
    def per_iter(self) -> int:
        """Batches drawn per iteration by this process (one per device)."""
        return max(1, len(self.gpu_ids))

    def autocast(self) -> ContextManager:
        dtype = _PRECISIONS[self.cfg.TRAIN.precision]
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)


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


def _forward(run: Run, batches: list, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, acc) of one iteration, averaged over the devices of this process."""
    if isinstance(model, UserScatteredDataParallel) and run.gpu_ids:
        loss, acc = model(batches)
    else:
        feed = {k: v.to(run.device, non_blocking=True) for k, v in batches[0].items()}
        loss, acc = model(feed)
    return loss.mean(), acc.mean()


def train_one_epoch(run: Run, epoch: int, start_iter: int = 0) -> None:
    """Iterations ``start_iter..epoch_iters-1`` of ``epoch`` (1-based); logs every
    ``disp_iter`` iterations, records the history and, with
    ``TRAIN.checkpoint_every``, writes mid-epoch checkpoints.

    Raises :class:`NonFiniteLossError` (on every rank) when the loss is NaN or infinite.
    """
    cfg = run.cfg
    epoch_iters, disp_iter = cfg.TRAIN.epoch_iters, max(1, cfg.TRAIN.disp_iter)
    every = cfg.TRAIN.checkpoint_every
    assert run.batches is not None
    run.model.train(not cfg.TRAIN.fix_bn)
    batch_time, data_time, ave_loss, ave_acc = (AverageMeter() for _ in range(4))
    bar = tqdm(total=epoch_iters, initial=start_iter, desc=f"Epoch {epoch}/{cfg.TRAIN.num_epoch}",
               unit="it", dynamic_ncols=True, disable=None if run.env.is_main else True)
    tic = time.perf_counter()
    for i in range(start_iter, epoch_iters):
        batches = next(run.batches)
        data_time.update(time.perf_counter() - tic)
        cur_iter = i + (epoch - 1) * epoch_iters
        lr_enc, lr_dec = adjust_learning_rate(run.optimizers, cur_iter, cfg)
        for optimizer in run.optimizers:
            optimizer.zero_grad(set_to_none=True)

        with run.autocast():
            loss, acc = _forward(run, batches, run.model)
        # Mean over ranks; also a NaN on one rank stops every rank at the same iteration.
        loss_value, acc_value = D.all_reduce_mean(
            torch.stack([loss.detach().float(), acc.detach().float()])).tolist()
        if not math.isfinite(loss_value):
            bar.close()
            where = run.last_checkpoint or "none yet"
            raise NonFiniteLossError(
                f"loss is {loss_value} at epoch {epoch}, iteration {i}/{epoch_iters} (global "
                f"iteration {cur_iter}); training stopped before this update. Last checkpoint "
                f"written: {where}. Lower TRAIN.lr_encoder/lr_decoder or check the data, then "
                f"resume from that checkpoint (train.py --resume PATH).")

        if run.scaler is not None:
            run.scaler.scale(loss).backward()
            for optimizer in run.optimizers:
                run.scaler.step(optimizer)
            run.scaler.update()
        else:
            loss.backward()
            for optimizer in run.optimizers:
                optimizer.step()
        run.global_iter = cur_iter + 1

        batch_time.update(time.perf_counter() - tic)
        tic = time.perf_counter()
        if run.monitor is not None:
            run.monitor.iteration(epoch, i, run.global_iter, loss_value, acc_value,
                                  (lr_enc, lr_dec), data_time.value(), batch_time.value())
        ave_loss.update(loss_value)
        ave_acc.update(acc_value * 100)
        bar.update(1)
        bar.set_postfix(loss=f"{ave_loss.average():.4f}", acc=f"{ave_acc.average():.2f}",
                        lr=f"{lr_enc:.2e}", refresh=False)
        if i % disp_iter == 0:
            logger.info("Epoch: [%d][%d/%d], Time: %.2f, Data: %.2f, lr_encoder: %.6f, "
                        "lr_decoder: %.6f, Accuracy: %4.2f, Loss: %.6f",
                        epoch, i, epoch_iters, batch_time.average(), data_time.average(),
                        lr_enc, lr_dec, ave_acc.average(), ave_loss.average())
            train_hist = run.history["train"]
            train_hist["epoch"].append(epoch - 1 + i / epoch_iters)
            train_hist["loss"].append(loss_value)
            train_hist["acc"].append(acc_value)
        if every > 0 and (i + 1) % every == 0 and i + 1 < epoch_iters:
            checkpoint(run, epoch, i + 1)
            tic = time.perf_counter()
    bar.close()
    if ave_loss.initialized:
        logger.info("Epoch %d done: mean loss %.6f, mean accuracy %.2f%%, %.2f s/iteration",
                    epoch, ave_loss.average(), ave_acc.average(), batch_time.average())


# ============================================================================ precise BN

def precise_bn(run: Run, num_batches: int) -> None:
    """Replace every BatchNorm's running mean and variance by their average over
    ``num_batches`` fresh training batches (train mode, no gradients).

    Each forward runs with momentum 1, so the running statistics become that
    batch's (synchronised) statistics, and they are averaged here with equal
    weights: the cumulative average that momentum ``None`` would give, which
    synchronised BatchNorm does not accept. Momenta are restored afterwards.
    Every rank runs the same number of forwards.
    """
    cfg = run.cfg
    layers = [m for m in run.module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if num_batches <= 0 or not layers:
        return
    if cfg.TRAIN.fix_bn:
        logger.info("TRAIN.fix_bn is set: BatchNorm statistics stay frozen, precise BN skipped")
        return
    workers = min(loader_workers(cfg.TRAIN.workers), num_batches)
    bn_seed = derive_seed(cfg.TRAIN.seed, BN_STREAM, run.global_iter)
    loader, _ = make_loader(run.dataset, cfg, workers, run.per_iter, 0, num_batches,
                             lambda g: bn_seed, run.device.type == "cuda")
    model = run.model.module if isinstance(run.model, DistributedDataParallel) else run.model
    momenta = [m.momentum for m in layers]
    # Synchronised BatchNorm keeps its moving average as sums weighted by
    # _running_iter (overwritten by momentum-1 updates): keep the weights.
    weights = [m._running_iter.clone() if hasattr(m, "_running_iter") else None for m in layers]
    means = [torch.zeros_like(m.running_mean) for m in layers]
    variances = [torch.zeros_like(m.running_var) for m in layers]
    was_training = run.module.training
    run.module.train()
    try:
        for m in layers:
            m.momentum = 1.0
        with torch.no_grad():
            for k, batches in enumerate(loader):
                with run.autocast():
                    _forward(run, batches, model)
                for m, mean, var in zip(layers, means, variances):
                    mean.add_(m.running_mean - mean, alpha=1.0 / (k + 1))
                    var.add_(m.running_var - var, alpha=1.0 / (k + 1))
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        run.module.train(was_training)
    with torch.no_grad():
        for m, mean, var, weight in zip(layers, means, variances, weights):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            if weight is not None:  # later updates continue from these statistics
                m._running_iter.copy_(weight)
                m._tmp_running_mean.copy_(mean * weight)
                m._tmp_running_var.copy_(var * weight)
    logger.info("Precise BN: running statistics recomputed over %d batches", num_batches)


# ============================================================================ checkpoints

def checkpoint(run: Run, epoch: int, iteration: int) -> str:
    """Precise BN when enabled (``TRAIN.precise_bn_iters``), then the checkpoint after
    ``iteration`` iterations of ``epoch`` (``resume.write_checkpoint``); returns the
    state file's path. Every rank must call it."""
    precise_bn(run, int(run.cfg.TRAIN.precise_bn_iters))
    return write_checkpoint(run, epoch, iteration)


# ============================================================================ validation

def end_epoch(run: Run, epoch: int) -> dict | None:
    """After the epoch-``epoch`` checkpoint: validate when ``TRAIN.eval_every`` says
    so (rank 0, single process, then back to training mode) and write the epoch
    record of the metrics file; returns the validation summary (rank 0) or None."""
    val = None
    if run.monitor.validation_due(epoch):
        if run.env.is_main:
            val = validate(run.cfg, run.module.encoder, run.module.decoder, run.device,
                           validation_sizes(run.cfg))
        D.barrier()
        run.model.train(not run.cfg.TRAIN.fix_bn)
    run.monitor.end_epoch(epoch, run.global_iter, val)
    return val


def stop_early(run: Run, epoch: int) -> bool:
    """Whether ``TRAIN.early_stop`` ends the run after ``epoch`` (rank 0 decides,
    every rank gets the answer; call it on every rank after ``end_epoch``). Logs
    why and which epoch was best."""
    if int(run.cfg.TRAIN.early_stop) <= 0 or not run.monitor.validation_due(epoch):
        return False
    stop = D.all_gather_objects(bool(run.env.is_main and run.monitor.should_stop))[0]
    if stop and run.env.is_main:
        _log_stop(run, epoch)
    return stop


def _log_stop(run: Run, epoch: int) -> None:
    mon = run.monitor
    count = f"{mon.since_best} validation{'' if mon.since_best == 1 else 's'}"
    best = f"epoch {mon.best['epoch']}, {mon.metric.label} {mon.best['score']:.4f}"
    if mon.metric.key != "mean_iou":
        best += f" (mean IoU {mon.best['mean_iou']:.4f})"
    logger.info("Early stop after epoch %d of %d: %s has not improved for %s (TRAIN.early_stop "
                "%d). Best: %s, kept as %s/encoder_best.pth and decoder_best.pth "
                "(VAL.checkpoint best.pth)", epoch, int(run.cfg.TRAIN.num_epoch),
                mon.metric.label, count, mon.patience, best, run.cfg.DIR)


# ============================================================================ main

def _build_module(cfg: CfgNode, point: ResumePoint | None, env: D.DistEnv,
                  loss_weights: torch.Tensor | None = None) -> SegmentationModule:
    enc_weights = point.encoder if point and isinstance(point.encoder, str) else \
        ("" if point else cfg.MODEL.weights_encoder)
    dec_weights = point.decoder if point and isinstance(point.decoder, str) else \
        ("" if point else cfg.MODEL.weights_decoder)
    bn_momentum = float(cfg.MODEL.bn_momentum)
    # Only the first process of each node downloads ImageNet weights; the others wait.
    downloads = bool(cfg.MODEL.pretrained) and not point and not enc_weights
    if downloads and env.local_rank != 0:
        D.barrier()
    encoder = ModelBuilder.build_encoder(
        arch=cfg.MODEL.arch_encoder, fc_dim=cfg.MODEL.fc_dim, weights=enc_weights,
        pretrained=bool(cfg.MODEL.pretrained) and point is None,
        model_dir=cfg.MODEL.pretrained_dir, bn_momentum=bn_momentum)
    if downloads and env.local_rank == 0:
        D.barrier()
    decoder = ModelBuilder.build_decoder(
        arch=cfg.MODEL.arch_decoder, fc_dim=cfg.MODEL.fc_dim, num_class=cfg.DATASET.num_class,
        weights=dec_weights, use_softmax=False,
        reinit_classifier=bool(cfg.MODEL.reinit_classifier) and point is None,
        bn_momentum=bn_momentum)
    if point is not None:
        for net, weights, name in ((encoder, point.encoder, "encoder"),
                                   (decoder, point.decoder, "decoder")):
            if isinstance(weights, dict):
                load_weights(net, weights, f"{name} weights in {point.source}")
    deep_sup = cfg.TRAIN.deep_sup_scale if str(cfg.MODEL.arch_decoder).lower().endswith("deepsup") \
        else None
    return SegmentationModule(encoder, decoder, make_criterion(loss_weights), deep_sup)


def _wrap(module: SegmentationModule, device: torch.device, gpu_ids: list[int],
          env: D.DistEnv) -> nn.Module:
    if env.enabled:
        # Every parameter takes part in the loss (deep-sup heads included), so
        # DDP needs no search for unused parameters.
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda"
                                       else None)
    if len(gpu_ids) > 1:
        model = UserScatteredDataParallel(module, device_ids=gpu_ids)
        patch_replication_callback(model)  # synchronised BatchNorm over the replicas
        return model
    return module


def _check_cfg(cfg: CfgNode) -> None:
    t = cfg.TRAIN
    if t.precision not in _PRECISIONS:
        raise ConfigError(f"TRAIN.precision '{t.precision}' is not one of {sorted(_PRECISIONS)}")
    for key in ("epoch_iters", "num_epoch", "batch_size_per_gpu"):
        if int(t[key]) < 1:
            raise ConfigError(f"TRAIN.{key} must be >= 1, got {t[key]}")
    for key in ("workers", "checkpoint_every", "precise_bn_iters", "num_threads", "eval_every",
                "early_stop"):
        if int(t[key]) < 0:
            raise ConfigError(f"TRAIN.{key} must be >= 0, got {t[key]}")
    if int(t.early_stop) > 0 and int(t.eval_every) == 0:
        raise ConfigError(f"TRAIN.early_stop {t.early_stop} counts validations, but TRAIN."
                          f"eval_every is 0 (no validation): set TRAIN.eval_every 1 (or N)")
    names = class_names(cfg)
    parse_best_metric(t.best_metric, [names[k] for k in range(len(names))])
    check_class_weights(cfg)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def main(cfg: CfgNode, gpus: str | Sequence[str] = "auto", resume: str | None = None
         ) -> TrainSummary:
    """Train as ``cfg`` says on ``gpus`` (see :func:`select_devices`).

    ``resume``: a ``state_*.pth`` file to continue from, or ``"auto"`` for the
    newest one in ``cfg.DIR`` (none: start from scratch); without it,
    ``TRAIN.start_epoch N > 0`` continues from the epoch-N checkpoint. Under
    torchrun (RANK, WORLD_SIZE, LOCAL_RANK set) joins the process group first
    and leaves it at the end. Returns the history and the last state file.
    """
    tune_allocator()
    configure_mirrors(cfg.MODEL.mirrors)  # for the ImageNet weights an encoder starts from
    env = D.from_environment()
    device, gpu_ids = select_devices(gpus, env)
    # Bounded start-up and waits; a lost peer ends this rank with one line (distributed.py).
    with D.process_group(env, device, float(cfg.TRAIN.dist_timeout),
                         float(cfg.TRAIN.peer_timeout), lambda: restart_source(cfg, resume)):
        return _train(cfg, env, device, gpu_ids, resume)


def _train(cfg: CfgNode, env: D.DistEnv, device: torch.device, gpu_ids: list[int],
           resume: str | None) -> TrainSummary:
    _check_cfg(cfg)
    if env.is_main:
        os.makedirs(cfg.DIR, exist_ok=True)
        for stale in remove_stale_temporaries(cfg.DIR):
            print(f"[mit_semseg] removed {stale}, left by an interrupted checkpoint write")
    setup_logger(env.rank, os.path.join(cfg.DIR, "log.txt"))
    where = f"{device}" + (f" x{len(gpu_ids)} (GPUs {gpu_ids})" if len(gpu_ids) > 1 else "")
    if env.enabled:
        where += f", rank {env.rank} of {env.world_size}"
    logger.info("Training on %s; checkpoints in %s", where, cfg.DIR)
    if device.type == "cpu":
        logger.info("Memory: %s", allocator_state())
    check_dataset(cfg)
    point = resume_point(cfg, resume)

    if device.type == "cpu" and int(cfg.TRAIN.num_threads) > 0:
        torch.set_num_threads(int(cfg.TRAIN.num_threads))
    loss_weights = class_weights(cfg, env.is_main)
    seed = int(cfg.TRAIN.seed)
    _seed_everything(seed)
    module = _build_module(cfg, point, env, loss_weights)
    module.to(device)
    if not cfg.TRAIN.exact:
        fast_training_(module)
    model = _wrap(module, device, gpu_ids, env)
    optimizers = create_optimizers((module.encoder, module.decoder), cfg)
    scaler = torch.amp.GradScaler(device.type) if cfg.TRAIN.precision == "fp16" else None
    dataset = TrainDataset(cfg.DATASET.root_dataset, cfg.DATASET.list_train, cfg.DATASET,
                           batch_per_gpu=cfg.TRAIN.batch_size_per_gpu, seed=seed, rank=env.rank,
                           ignore_padding=bool(cfg.TRAIN.ignore_padding))
    run = Run(cfg, env, device, gpu_ids, module, model, optimizers, scaler, dataset)

    epoch_iters, num_epoch = cfg.TRAIN.epoch_iters, cfg.TRAIN.num_epoch
    first_epoch, start_iter = (point.epoch, point.start_iter) if point else (1, 0)
    run.global_iter = (first_epoch - 1) * epoch_iters + start_iter
    if point is not None:
        restore(run, point)
    run.monitor = TrainingMonitor(cfg, env.is_main, run.global_iter if point else None)
    if env.is_main:
        atomic_write_text(cfg.dump(), os.path.join(cfg.DIR, "config.yaml"))
        logger.info("Running with config:\n%s", cfg.dump())
    logger.info("1 Epoch = %d iters; global batch = %d images (%d per device x %d devices)",
                epoch_iters, cfg.TRAIN.batch_size_per_gpu * run.per_iter * env.world_size,
                cfg.TRAIN.batch_size_per_gpu, run.per_iter * env.world_size)
    if first_epoch > num_epoch or _stopped_before(run):
        if first_epoch > num_epoch:
            logger.info("Nothing to do: %d of %d epochs already trained", first_epoch - 1,
                        num_epoch)
        run.monitor.close()
        return _summary(run, stopped_early=first_epoch <= num_epoch)

    every = int(cfg.TRAIN.checkpoint_every)
    loader, placeholders = make_loader(
        dataset, cfg, loader_workers(cfg.TRAIN.workers), run.per_iter, run.global_iter,
        num_epoch * epoch_iters,
        lambda g: derive_seed(seed, TRAIN_STREAM, segment_start(g, epoch_iters, every)),
        device.type == "cuda")
    run.batches = iter(loader)
    for _ in range(placeholders):
        next(run.batches)
    if point is not None and point.state is not None and "rng" in point.state:
        states = point.state["rng"]
        if len(states) != env.world_size:
            logger.warning("%s holds random states of %d ranks, this run has %d: rank 0's are "
                           "used everywhere", point.source, len(states), env.world_size)
        restore_rng_state(states[env.rank] if len(states) == env.world_size else states[0])

    # log lines go through tqdm.write so they do not break the progress bar
    stopped = False
    with logging_redirect_tqdm([logger]) if env.is_main else nullcontext():
        for epoch in range(first_epoch, num_epoch + 1):
            train_one_epoch(run, epoch, start_iter if epoch == first_epoch else 0)
            checkpoint(run, epoch, epoch_iters)
            end_epoch(run, epoch)
            if stop_early(run, epoch):
                stopped = True
                break
    run.monitor.close()
    run.batches = None  # stops the loader workers
    logger.info("Training Done!")
    return _summary(run, stopped)


def _stopped_before(run: Run) -> bool:
    """A resumed run whose records up to the resume point already met
    ``TRAIN.early_stop``: nothing to train (logged)."""
    stop = D.all_gather_objects(bool(run.env.is_main and run.monitor.should_stop))[0]
    if stop and run.env.is_main:
        mon = run.monitor
        logger.info("Nothing to do: the run stopped early (TRAIN.early_stop %d); best: epoch "
                    "%d, %s %.4f", mon.patience, mon.best["epoch"], mon.metric.label,
                    mon.best["score"])
    return stop


def _summary(run: Run, stopped_early: bool) -> TrainSummary:
    best = run.monitor.best if run.monitor is not None else None
    return TrainSummary(run.history, run.last_checkpoint, run.global_iter, stopped_early,
                        best["epoch"] if best else None)
