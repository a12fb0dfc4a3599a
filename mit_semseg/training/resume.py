"""Checkpoints of a run and where a run continues.

``write_checkpoint(run, epoch, iteration)`` writes the epoch-N files (or a
``state_iter_G.pth`` inside an epoch) with everything an exact continuation
needs; ``resume_point(cfg, resume)`` finds where to continue (``--resume`` or
``TRAIN.start_epoch``, the original's weights-only checkpoints included) and
``restore(run, point)`` puts optimizers, scaler and history back. States that
hooks keep (the EMA's average) are saved under ``hooks`` by their ``state_key``;
each hook reads its own back from ``run.point.state``. File names and
formats: :mod:`mit_semseg.training.state`; ``TRAIN.save_format safetensors``
writes the epoch-N weights as ``{encoder,decoder}_epoch_N.safetensors``
instead of ``.pth`` (the state and history files stay ``.pth``), and either
format is found when a run continues.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from yacs.config import CfgNode

from ..checkpoints.files import CheckpointError, atomic_save, find_weights, load_file
from ..checkpoints.formats import WEIGHT_FORMATS, twin_path, write_weights
from ..checkpoints.ledger import forget_sha256
from ..config import check_value
from ..runtime.process import loader_workers
from . import distributed as D
from .optim import load_optimizer_state
from .state import (STATE_VERSION, capture_rng_state, epoch_paths, iter_state_path,
                    latest_state, list_states, load_training_state)

__all__ = ["ResumePoint", "resume_point", "write_checkpoint", "restore", "restart_source",
           "save_weights", "weights_suffix"]

logger = logging.getLogger("Logger")


def _cpu_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}


def weights_suffix(cfg: CfgNode) -> str:
    return WEIGHT_FORMATS[check_value("TRAIN.save_format", cfg.TRAIN.save_format)]


def save_weights(state: dict[str, torch.Tensor], pth_path: str, suffix: str) -> None:
    """The epoch's weights in the configured format; a file of the same epoch in the
    other format (an older run's) is removed, so that no stale twin is loaded."""
    path = os.path.splitext(pth_path)[0] + suffix
    if suffix == ".pth":
        atomic_save(state, path)
    else:
        write_weights(state, path)
    stale = twin_path(path)
    if stale is not None and os.path.isfile(stale):
        os.unlink(stale)
        forget_sha256(os.path.dirname(os.path.abspath(stale)), os.path.basename(stale))


def write_checkpoint(run: Any, epoch: int, iteration: int) -> str:
    """Write the checkpoint of ``run`` (a ``trainer.Trainer``) after ``iteration`` iterations
    of ``epoch`` (all of them: the epoch-N files; fewer: ``state_iter_G.pth``);
    return the state file's path. Rank 0 writes; every rank must call it.
    """
    cfg = run.cfg
    # taken now: draws made before (precise BN's dropout) are part of the stream
    # a resumed run continues
    rng_states = D.all_gather_objects(capture_rng_state())
    end_of_epoch = iteration >= cfg.TRAIN.epoch_iters
    paths = epoch_paths(cfg.DIR, epoch)
    path = paths["state"] if end_of_epoch else iter_state_path(cfg.DIR, run.global_iter)
    if run.env.is_main:
        logger.info("Saving checkpoints... (%s)", path)
        encoder, decoder = _cpu_state(run.module.encoder), _cpu_state(run.module.decoder)
        state = {
            "version": STATE_VERSION, "kind": "epoch" if end_of_epoch else "iter",
            "epoch": epoch, "iteration": iteration, "global_iter": run.global_iter,
            "epoch_iters": cfg.TRAIN.epoch_iters, "num_epoch": cfg.TRAIN.num_epoch,
            "checkpoint_every": cfg.TRAIN.checkpoint_every, "seed": cfg.TRAIN.seed,
            "workers": loader_workers(cfg.TRAIN.workers), "world_size": run.env.world_size,
            "num_devices": run.per_iter,
            "optimizers": {"encoder": run.optimizers[0].state_dict(),
                           "decoder": run.optimizers[1].state_dict()},
            "grad_scaler": run.scaler.state_dict() if run.scaler is not None else None,
            "history": run.history, "rng": rng_states,
        }
        # what hooks keep across a resume (the EMA's average), by their state_key
        hook_states = {h.state_key: h.state_dict(run) for h in run.hooks
                       if getattr(h, "state_key", None)}
        if hook_states:
            state["hooks"] = hook_states
        if end_of_epoch:
            suffix = weights_suffix(cfg)
            atomic_save(run.history, paths["history"])
            save_weights(encoder, paths["encoder"], suffix)
            save_weights(decoder, paths["decoder"], suffix)
        else:
            state["encoder"], state["decoder"] = encoder, decoder
        atomic_save(state, path)  # last: a state file means the whole checkpoint is on disk
        for _, older in list_states(cfg.DIR, cfg.TRAIN.epoch_iters):
            if os.path.basename(older).startswith("state_iter_") and older != path:
                os.unlink(older)
    D.barrier()
    run.last_checkpoint = path
    return path


@dataclass
class ResumePoint:
    epoch: int  # epoch to continue (1-based)
    start_iter: int  # iterations of that epoch already done
    encoder: str | dict  # weights: a file, or a state dict
    decoder: str | dict
    state: dict | None  # training state (None: weights only, as the original)
    source: str


def resume_point(cfg: CfgNode, resume: str | None) -> ResumePoint | None:
    weights_suffix(cfg)  # a wrong TRAIN.save_format fails now, not after an epoch
    epoch_iters = cfg.TRAIN.epoch_iters
    if resume == "auto":
        point = _newest_complete(cfg.DIR, epoch_iters)
        if point is not None:
            return point
    elif resume:
        return _point_from_state(resume, load_training_state(resume), epoch_iters)
    if resume:
        if cfg.TRAIN.start_epoch <= 0:
            logger.info("--resume auto: no state file in %s, starting from scratch", cfg.DIR)
            return None
    n = int(cfg.TRAIN.start_epoch)
    if n <= 0:
        return None
    paths = epoch_paths(cfg.DIR, n)
    weights = {}
    for kind in ("encoder", "decoder"):
        weights[kind] = find_weights(paths[kind])
        if weights[kind] is None:
            raise CheckpointError(f"TRAIN.start_epoch {n}: checkpoint not found: {paths[kind]} "
                                  f"(DIR is {cfg.DIR}); train that epoch first or set "
                                  f"TRAIN.start_epoch to an epoch that was saved")
    if os.path.isfile(paths["state"]):
        return _point_from_state(paths["state"], load_training_state(paths["state"]), epoch_iters)
    history = load_file(paths["history"], "history") if os.path.isfile(paths["history"]) else None
    logger.warning("%s not found (a checkpoint of the original toolkit?): resuming from the "
                   "epoch-%d weights with fresh optimizers; the learning-rate schedule continues "
                   "at iteration %d", paths["state"], n, n * epoch_iters)
    state = {"history": history} if isinstance(history, dict) and "train" in history else None
    return ResumePoint(n + 1, 0, weights["encoder"], weights["decoder"], state,
                       weights["encoder"])


def _newest_complete(directory: str, epoch_iters: int) -> ResumePoint | None:
    """``--resume auto``: the state file furthest along that loads, with its weights.

    Files are written whole or not at all (temporary file, then rename), so a
    write cut short leaves no state file; one damaged later (a bad copy, a full
    disk) is skipped with a warning naming it. Under torchrun every rank must
    continue from the same file: ranks that see different newest files (a
    shared file system that shows a node an older listing) fail with
    CheckpointError, which restarts the group.
    """
    point = None
    for _, path in reversed(list_states(directory, epoch_iters)):
        try:
            point = _point_from_state(path, load_training_state(path), epoch_iters)
            break
        except CheckpointError as exc:
            logger.warning("--resume auto: skipping %s: %s", path, exc)
    chosen = [os.path.basename(p) if p else None
              for p in D.all_gather_objects(point.source if point else None)]
    if len(set(chosen)) > 1:
        seen = ", ".join(f"rank {r}: {c}" for r, c in enumerate(chosen))
        raise CheckpointError(f"--resume auto: the ranks found different newest state files in "
                              f"{directory} ({seen}); DIR must be one folder that every node "
                              f"sees up to date")
    return point


def restart_source(cfg: CfgNode, resume: str | None) -> str:
    """Where a restart of this command continues (for the report of a lost peer)."""
    if not resume:
        return "the beginning (no --resume auto on the command line)"
    if resume != "auto":
        return f"{resume} again (--resume auto would take the newest state file)"
    path = latest_state(cfg.DIR, cfg.TRAIN.epoch_iters)
    return path if path is not None else f"the start (no state file in {cfg.DIR} yet)"


def _point_from_state(path: str, state: dict, epoch_iters: int) -> ResumePoint:
    if state.get("epoch_iters", epoch_iters) != epoch_iters:
        logger.warning("%s was written with TRAIN.epoch_iters %s, this run uses %d: epochs and "
                       "the learning-rate schedule are counted with %d", path,
                       state["epoch_iters"], epoch_iters, epoch_iters)
    epoch, iteration = int(state["epoch"]), int(state["iteration"])
    if state.get("kind") == "epoch":
        weights = epoch_paths(os.path.dirname(path) or ".", epoch)
        found = [find_weights(weights[kind]) for kind in ("encoder", "decoder")]
        for kind, p in zip(("encoder", "decoder"), found):
            if p is None:
                raise CheckpointError(f"{path} needs its weights file {weights[kind]}, "
                                      f"which is missing")
        encoder, decoder = found[0], found[1]
    else:
        encoder, decoder = state["encoder"], state["decoder"]
    if iteration >= epoch_iters:
        epoch, iteration = epoch + 1, 0
    return ResumePoint(epoch, iteration, encoder, decoder, state, path)


def restore(run: Any, point: ResumePoint) -> None:
    """Optimizer, scaler and history from the resume point (weights are loaded already)."""
    state, cfg = point.state, run.cfg
    run.last_checkpoint = point.source
    logger.info("Resuming from %s at epoch %d, iteration %d (global iteration %d)",
                point.source, point.epoch, point.start_iter, run.global_iter)
    if state is None:
        return
    if isinstance(state.get("history"), dict):
        run.history = state["history"]
    if "optimizers" not in state:
        return
    for opt, key in zip(run.optimizers, ("encoder", "decoder")):
        load_optimizer_state(opt, state["optimizers"][key])
    if run.scaler is not None and state.get("grad_scaler"):
        run.scaler.load_state_dict(state["grad_scaler"])
    changed = [f"{name} {state.get(key)} -> {now}" for key, name, now in (
        ("seed", "TRAIN.seed", cfg.TRAIN.seed), ("workers", "loader workers (TRAIN.workers capped at the CPU count)",
         loader_workers(cfg.TRAIN.workers)),
        ("checkpoint_every", "TRAIN.checkpoint_every", cfg.TRAIN.checkpoint_every),
        ("num_epoch", "TRAIN.num_epoch", cfg.TRAIN.num_epoch),
        ("world_size", "world size", run.env.world_size),
        ("num_devices", "devices per process", run.per_iter)) if state.get(key, now) != now]
    if changed:
        logger.warning("Settings differ from the run that wrote %s (%s): training continues, "
                       "but not exactly as that run would have", point.source, "; ".join(changed))
