"""Training: ``main`` sets up a run (devices, process group, network, optimizers,
data, hooks) and hands it to the :class:`~mit_semseg.training.trainer.Trainer`.

Recipe (kept from the original): one SGD optimizer for the encoder and one
for the decoder (momentum ``TRAIN.beta1``, weight decay ``TRAIN.weight_decay``
on conv/linear weights only), poly learning rate updated every iteration,
``NLLLoss(ignore_index=-1)`` (with class weights when ``TRAIN.class_weights``
or ``TRAIN.class_weight_rule`` ask for them, see ``loss``) plus
``TRAIN.deep_sup_scale`` times the auxiliary loss for ``*_deepsup`` decoders,
``TRAIN.epoch_iters`` iterations per epoch whatever the batch size, and
checkpoints ``encoder/decoder/history_epoch_N.pth`` in ``cfg.DIR`` (see
:mod:`mit_semseg.training.state`). The recipes modern encoders need (``TRAIN.optim
AdamW``, ``layer_decay``, ``lr_schedule`` and warmup, ``ema_decay``, ``accumulate``,
``loss``, ``DATASET.augment mmseg``) are registry entries and hooks whose defaults
keep this recipe (docs/training.md, "Training recipes").

Devices: the CPU, one GPU, several GPUs in one process
(``UserScatteredDataParallel``: every GPU gets its own batch), or one process
per device under ``torchrun`` (``DistributedDataParallel``; every rank draws
its own batches, so the global batch is world size x ``batch_size_per_gpu``).
BatchNorm statistics are synchronised over all devices in both multi-device
modes.

Data stream (``TRAIN.stream``): ``resumable`` (default) restarts every rank's
``TrainDataset`` stream at the start of every epoch, and every
``TRAIN.checkpoint_every`` iterations inside an epoch, from a seed derived from
``(TRAIN.seed, global iteration)`` (and the rank and loader worker). A run
resumed from any checkpoint therefore sees the same batches, learning rates,
optimizer momenta and random numbers as a run that never stopped, provided
``TRAIN.seed``, ``TRAIN.workers``, ``TRAIN.checkpoint_every``,
``TRAIN.epoch_iters``, ``TRAIN.num_epoch``, ``TRAIN.accumulate`` and the number
of devices are unchanged. ``original`` draws the original train.py's batch sequence (see
:mod:`mit_semseg.training.original_stream`); with ``TRAIN.exact True`` a run on
one device equals the original's iteration by iteration.
"""
from __future__ import annotations

import logging
import os
import random
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from yacs.config import CfgNode

from ..accel import fast_training_
from ..checkpoints.files import atomic_write_text, remove_stale_temporaries
from ..config import check_config
from ..data.classes import class_names
from ..data.datasets import TrainDataset
from ..models import SegmentationModule, SegmentationNetwork, build_model
from ..nn import UserScatteredDataParallel, patch_replication_callback
from ..runtime.devices import DeviceUnavailableError, training_devices
from ..runtime.log import setup_logger
from ..runtime.process import allocator_state, set_threads, tune_allocator
from . import distributed as D
from .feature_cache import FrozenEncoderModule, freeze_encoder_, open_feature_cache
from .hooks import build_hooks
from .loss import build_criterion, class_weights
from .monitor import parse_best_metric
from .optim import create_optimizers
from .original_stream import OriginalStream
from .resume import ResumePoint, restart_source, resume_point
from .stream import DataNotFoundError, ResumableStream, check_dataset
from .trainer import NonFiniteLossError, Trainer, TrainSummary

__all__ = ["DataNotFoundError", "NonFiniteLossError", "DeviceError", "TrainSummary",
           "select_devices", "build_trainer", "main", "STREAMS"]

logger = logging.getLogger("Logger")

DeviceError = DeviceUnavailableError  # the name of earlier versions

# TRAIN.stream -> the data stream
STREAMS = {"resumable": ResumableStream, "original": OriginalStream}


def select_devices(gpus: str | Sequence[str], env: D.DistEnv) -> tuple[torch.device, list[int]]:
    """The main device and GPU ids of this training process (see
    ``runtime.devices.training_devices``)."""
    return training_devices(gpus, distributed=env.enabled, local_rank=env.local_rank)


# ============================================================================ setup

def _build_network(cfg: CfgNode, point: ResumePoint | None, env: D.DistEnv) -> SegmentationNetwork:
    if point is not None:
        return build_model(cfg, (point.encoder, point.decoder))
    weights = (cfg.MODEL.weights_encoder, cfg.MODEL.weights_decoder)
    imagenet = bool(cfg.MODEL.pretrained)
    # Only the first process of each node downloads ImageNet weights; the others wait.
    downloads = imagenet and not weights[0]
    if downloads and env.local_rank != 0:
        D.barrier()
    network = build_model(cfg, weights, imagenet=imagenet,
                          reinit_classifier=bool(cfg.MODEL.reinit_classifier))
    if downloads and env.local_rank == 0:
        D.barrier()
    return network


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
    """The schema's rules (a config built without ``load_cfg`` is checked here too),
    and TRAIN.best_metric against the class names."""
    check_config(cfg)
    names = class_names(cfg)
    parse_best_metric(cfg.TRAIN.best_metric, [names[k] for k in range(len(names))])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_trainer(cfg: CfgNode, env: D.DistEnv, device: torch.device, gpu_ids: list[int],
                  resume: str | None) -> Trainer:
    """Everything a run needs, in the order the recipe's random numbers depend on:
    the resume point, the seeds, the network (ImageNet / file / resume weights), the
    training module and its wrapper, optimizers, the dataset and stream, the hooks."""
    check_dataset(cfg)
    point = resume_point(cfg, resume)
    if device.type == "cpu":
        set_threads(int(cfg.TRAIN.num_threads))
    loss_weights = class_weights(cfg, env.is_main)
    seed = int(cfg.TRAIN.seed)
    stream_name = str(cfg.TRAIN.stream).lower()
    if stream_name == "original":
        OriginalStream.seed(seed)
    else:
        _seed_everything(seed)
    network = _build_network(cfg, point, env)
    deep_sup = cfg.TRAIN.deep_sup_scale if getattr(network.decoder, "deep_sup", False) else None
    frozen = bool(cfg.MODEL.freeze_encoder)
    if frozen:
        freeze_encoder_(network.encoder)
    module_cls = FrozenEncoderModule if frozen else SegmentationModule
    module = module_cls.from_network(network, build_criterion(cfg, loss_weights), deep_sup)
    module.to(device)
    if not cfg.TRAIN.exact:
        fast_training_(module)
    model = _wrap(module, device, gpu_ids, env)
    optimizers = create_optimizers((module.encoder, module.decoder), cfg)
    scaler = torch.amp.GradScaler(device.type) if cfg.TRAIN.precision == "fp16" else None
    dataset = TrainDataset(cfg.DATASET.root_dataset, cfg.DATASET.list_train, cfg.DATASET,
                           batch_per_gpu=cfg.TRAIN.batch_size_per_gpu, seed=seed, rank=env.rank,
                           ignore_padding=bool(cfg.TRAIN.ignore_padding))
    if cfg.TRAIN.feature_cache:
        dataset = open_feature_cache(cfg, env, module.encoder, dataset, device)
    trainer = Trainer(cfg, env, device, gpu_ids, network, module, model, optimizers, scaler,
                      dataset, STREAMS[stream_name](), point)
    epoch_iters = int(cfg.TRAIN.epoch_iters)
    trainer.first_epoch, trainer.start_iter = (point.epoch, point.start_iter) if point else (1, 0)
    trainer.global_iter = (trainer.first_epoch - 1) * epoch_iters + trainer.start_iter
    trainer.register_hooks(build_hooks(cfg))
    return trainer


# ============================================================================ main

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
    trainer = build_trainer(cfg, env, device, gpu_ids, resume)
    if env.is_main:
        atomic_write_text(cfg.dump(), os.path.join(cfg.DIR, "config.yaml"))
        logger.info("Running with config:\n%s", cfg.dump())
    accumulate = trainer.accumulate
    logger.info("1 Epoch = %d iters; global batch = %d images (%d per device x %d devices%s)",
                trainer.epoch_iters,
                cfg.TRAIN.batch_size_per_gpu * trainer.per_iter * env.world_size * accumulate,
                cfg.TRAIN.batch_size_per_gpu, trainer.per_iter * env.world_size,
                f" x {accumulate} accumulated" if accumulate > 1 else "")
    return trainer.train()

