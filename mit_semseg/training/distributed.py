"""torch.distributed helpers for ``torchrun``: read the launcher's environment,
start and stop the process group, and the few collectives training needs.

Every helper is a no-op (or the identity) when the run is not distributed,
so the training code calls them unconditionally.

Faults (docs/training.md, "When a node dies"). Under torchrun's elastic agent
a dead worker makes every node restart its workers, and the new round resumes
from the newest state file (``--resume auto``). For that to work:

* Start-up waits for its peers. The agents' store outlives a round, so it
  still holds the addresses the previous round's workers published; a new
  worker that reads one connects to a dead process (gloo: ``connectFullMesh
  ... Connection refused``). Rank 0 therefore opens a fresh *generation* (a
  counter in the store) and hands its number to each rank in reply to a
  nonce that rank has just published; the process group lives under that
  generation's key prefix, so only this round's addresses are seen. Every
  wait is bounded by ``TRAIN.peer_timeout``; a barrier ends the start-up.
* No rank waits forever. Collectives of a training step time out after
  ``TRAIN.peer_timeout`` seconds; waits for rank 0's one-sided work
  (validation, writing checkpoints, downloading weights) are barriers (gloo's
  monitored barrier, or one in the store under NCCL) bounded by
  ``TRAIN.dist_timeout``. A heartbeat thread per rank
  writes a counter to the store; rank 0 watches every rank, the others watch
  rank 0, and a rank silent for ``TRAIN.peer_timeout`` seconds is lost: the
  watcher exits (status 1) even while its main thread is blocked.
* A failed collective (a peer's socket closed, a timeout) ends the rank with
  :class:`PeerLostError`: one line naming the lost rank (the rank whose
  heartbeat stopped without saying goodbye) and the state file the restart
  resumes from; exit status 1, which the agent turns into a group restart.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist

from ..config import ConfigError
from ..errors import MitSemsegError

__all__ = ["DistEnv", "PeerLostError", "from_environment", "init_process_group", "process_group",
           "shutdown", "barrier", "all_reduce_mean", "all_gather_objects", "NCCL_WATCHDOG_ENV"]

logger = logging.getLogger("Logger")

# Set for NCCL process groups when the environment leaves them unset: a collective
# that fails or times out aborts the communicator and ends the process (instead of
# leaving a rank blocked on a GPU stream), and a stuck watchdog is itself watched.
NCCL_WATCHDOG_ENV = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "TORCH_NCCL_ENABLE_MONITORING": "1"}

_NS = "mit_semseg/"  # key namespace in the job's store


class PeerLostError(MitSemsegError, RuntimeError):
    """Another rank of a torchrun job died, stopped answering, or a collective failed.

    The message names the lost rank (as far as the heartbeats tell) and the
    state file a restart resumes from; the command exits with status 1, which
    torchrun's agent turns into a restart of the whole group.
    """


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job. ``enabled``: launched by torchrun
    (RANK, WORLD_SIZE and LOCAL_RANK set)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes files (rank 0)."""
        return self.rank == 0


def from_environment() -> DistEnv:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun); a plain run gets rank 0 of 1."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if not all(n in os.environ for n in names):
        missing = [n for n in names if n not in os.environ]
        if len(missing) < len(names):
            raise RuntimeError(f"torch.distributed environment is incomplete: {missing} not set; "
                               f"start multi-process runs with torchrun")
        return DistEnv()
    rank, world, local = (int(os.environ[n]) for n in names)
    if not 0 <= rank < world:
        raise RuntimeError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return DistEnv(rank=rank, world_size=world, local_rank=local, enabled=True)


# ============================================================================ the job

def _beat_interval(peer_timeout_s: float) -> float:
    """Seconds between heartbeats: a twentieth of the peer timeout, 0.05-0.5 s."""
    return min(0.5, max(0.05, peer_timeout_s / 20))


def _poll_delays(first: float = 0.002, most: float = 0.25) -> Iterator[float]:
    """Growing pauses for polling the store: quick answers for quick waits, little
    traffic for long ones."""
    delay = first
    while True:
        yield delay
        delay = min(most, delay * 1.5)


def _describe(exc: BaseException) -> str:
    """``Type: first sentence`` of an error, without C++ source locations."""
    text = re.sub(r"\[[^\]\s]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", " ".join(str(exc).split()))
    text = re.split(r"\.\s+(?=[A-Z])", text, maxsplit=1)[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _looks_like_comms(exc: BaseException) -> bool:
    """A failure of the process group's transport rather than of this rank's own work."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        marker in text for marker in ("gloo", "Gloo", "NCCL", "Connection", "connection",
                                      "Timed out", "timed out", "Socket", "socket"))


class _Job:
    """The live job: the store, this round's generation, the heartbeat thread and
    the one report a rank makes when the job breaks."""

    def __init__(self, env: DistEnv, store: Any, generation: int, peer_timeout_s: float,
                 patient_timeout_s: float, resume_from: Callable[[], str]) -> None:
        self.env = env
        self.store = store
        self.prefix = f"{_NS}{generation}/"
        self.peer_timeout_s = peer_timeout_s
        self.patient_timeout_s = patient_timeout_s
        self.resume_from = resume_from
        self.interval = _beat_interval(peer_timeout_s)
        self.barriers = 0
        self._lock = threading.Lock()
        self._reporting = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beats = 0
        self.seen: dict[int, float] = {}  # watched rank -> when its beat last changed

    # ------------------------------------------------------------------ keys
    def key(self, name: str) -> str:
        return self.prefix + name

    def _beat_key(self, rank: int) -> str:
        return self.key(f"beat/{rank}")

    def _left_key(self, rank: int) -> str:
        return self.key(f"left/{rank}")

    # ------------------------------------------------------------------ heartbeat
    def start_heartbeat(self) -> None:
        """Write the first beat now (so that every rank's key exists after the start-up
        barrier) and keep beating in a daemon thread with its own store connection."""
        self.store.set(self._beat_key(self.env.rank), "0")
        self.store.set(self.key(f"who/{self.env.rank}"),
                       f"{socket.gethostname()} pid {os.getpid()}")
        if self.env.world_size < 2:
            return
        watcher = self.store.clone()
        # a store that went silent must not block a beat for the whole peer timeout
        quick = min(self.peer_timeout_s, max(2.0, 4 * self.interval))
        watcher.set_timeout(timedelta(seconds=quick))
        self._thread = threading.Thread(target=self._heartbeat, args=(watcher,),
                                        name="mit_semseg-heartbeat", daemon=True)
        self._thread.start()

    def _heartbeat(self, store: Any) -> None:
        rank, world = self.env.rank, self.env.world_size
        watched = [r for r in range(world) if r != rank] if rank == 0 else [0]
        keys = [self._beat_key(r) for r in watched]
        seen = {r: (b"", time.monotonic()) for r in watched}
        self.seen = {r: t for r, (_, t) in seen.items()}
        store_quiet_since: float | None = None
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            try:
                self._beats += 1
                store.set(self._beat_key(rank), str(self._beats))
                values = store.multi_get(keys)
                store_quiet_since = None
            except Exception as exc:  # the store itself is gone (its node died)
                store_quiet_since = store_quiet_since or now
                if now - store_quiet_since > self.peer_timeout_s:
                    self._fatal(None, f"the job's store does not answer ({_describe(exc)})")
                continue
            for r, value in zip(watched, values):
                if value != seen[r][0]:
                    seen[r] = (value, now)
                    self.seen[r] = now
            silent = [r for r in watched if now - seen[r][1] > self.peer_timeout_s]
            with contextlib.suppress(Exception):
                silent = [r for r in silent if not store.check([self._left_key(r)])]
            if silent:
                with contextlib.suppress(Exception):
                    store.set(self.key("lost"), ",".join(map(str, silent)))
                self._fatal(silent, f"no heartbeat for {self.peer_timeout_s:g} s", store)

    def _fatal(self, lost: list[int] | None, how: str, store: Any = None) -> None:
        """The heartbeat thread's report: one line, then exit while the main thread
        may still be blocked in a collective."""
        with self._lock:
            if self._reporting or self._stop.is_set():
                return
            self._reporting = True
        message = self.message(lost, how, store)
        _record(message, self.env)
        print(f"error: {message}", file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(1)

    # ------------------------------------------------------------------ reports
    def _who(self, ranks: list[int], store: Any) -> str:
        names = []
        for r in ranks:
            where = ""
            with contextlib.suppress(Exception):
                if store.check([self.key(f"who/{r}")]):
                    where = f" ({store.get(self.key(f'who/{r}')).decode()})"
            names.append(f"{r}{where}")
        return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(names)

    def message(self, lost: list[int] | None, how: str, store: Any = None) -> str:
        """The one line of a rank that stops: who is lost (``lost``: ranks; None: the
        store's node; []: nobody silent, so peers that failed on their own, if any),
        what happened here, and where the restart resumes."""
        store = store or self.store
        if lost is None:
            host = os.environ.get("MASTER_ADDR", "?")
            port = os.environ.get("MASTER_PORT", "?")
            who = f"lost the node of rank 0 (it serves the job's store, {host}:{port})"
        elif lost:
            who = f"lost {self._who(lost, store)}"
        else:
            failed = self._failed_peers(store)
            who = ("; ".join(f"{self._who([r], store)} failed ({why})" for r, why in failed)
                   if failed else "no rank is silent (a peer may be stuck)")
        try:
            resume = self.resume_from()
        except Exception as exc:  # never let the report itself fail
            resume = f"? ({_describe(exc)})"
        return (f"rank {self.env.rank} of {self.env.world_size} stops: {who}: {how}; "
                f"torchrun restarts the group, resuming from {resume}")

    def _failed_peers(self, store: Any) -> list[tuple[int, str]]:
        """Peers that said goodbye with an error of their own: (rank, reason)."""
        found = []
        for r in range(self.env.world_size):
            with contextlib.suppress(Exception):
                if r != self.env.rank and store.check([self._left_key(r)]):
                    why = store.get(self._left_key(r)).decode()
                    if why.startswith("failed: "):
                        found.append((r, why[len("failed: "):]))
        return found

    def failure(self, exc: BaseException) -> BaseException | None:
        """What the main thread raises for ``exc`` (None: ``exc`` itself). Says goodbye
        in the store first, so that peers do not take this rank for lost."""
        with self._lock:
            already = self._reporting
            self._reporting = True
        if already:  # the heartbeat thread is ending the process with its report
            threading.Event().wait(30)
            os._exit(1)
        self.leave(f"failed: {_describe(exc)}")
        if isinstance(exc, MitSemsegError) or not isinstance(exc, Exception):
            return None
        lost = self.find_lost()
        if lost is None or lost or _looks_like_comms(exc):
            error = PeerLostError(self.message(lost, _describe(exc)))
            _record(str(error), self.env)
            return error
        return None

    def find_lost(self) -> list[int] | None:
        """Ranks that are gone: no heartbeat for a few beats and no goodbye. None when
        the store itself does not answer.

        Published verdicts (``lost``) and the heartbeat thread's record come first;
        otherwise the beats are watched for 2.5 intervals, cut short (with the
        suspects so far) when torchrun's agent sends SIGTERM to restart the group.
        """
        store, rank = self.store, self.env.rank
        others = [r for r in range(self.env.world_size) if r != rank]
        hurry = _Hurry.install()
        try:
            if store.check([self.key("lost")]):
                return [int(r) for r in store.get(self.key("lost")).decode().split(",") if r]
            now = time.monotonic()
            quiet = [r for r, t in self.seen.items() if now - t > 2.5 * self.interval]
            quiet = [r for r in quiet if not store.check([self._left_key(r)])]
            if quiet:
                return sorted(quiet)
            keys = [self._beat_key(r) for r in others]
            first = store.multi_get(keys)
            moved: set[int] = set()
            suspects = others
            end = now + max(0.5, 2.5 * self.interval)
            try:
                while True:
                    suspects = [r for r in others if r not in moved
                                and not store.check([self._left_key(r)])]
                    if not suspects or time.monotonic() >= end:
                        return suspects
                    time.sleep(self.interval / 4)
                    moved |= {r for r, a, b in zip(others, first, store.multi_get(keys))
                              if a != b}
            except _Hurry:
                return suspects
        except _Hurry:
            return []
        except Exception:
            return None
        finally:
            hurry.restore()

    # ------------------------------------------------------------------ end
    def linger(self) -> None:
        """Wait (at most the peer timeout) until every rank has left."""
        keys = [self._left_key(r) for r in range(self.env.world_size)]
        deadline = time.monotonic() + self.peer_timeout_s
        for delay in _poll_delays():
            with contextlib.suppress(Exception):
                if self.store.check(keys):
                    return
            if time.monotonic() > deadline:
                return
            time.sleep(delay)

    def leave(self, why: str) -> None:
        """Tell the peers this rank ends on purpose (the first reason given stays), and
        stop beating."""
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(Exception):
            self.store.set(self._left_key(self.env.rank), why)


class _Hurry(Exception):
    """SIGTERM (torchrun's agent stopping the workers) while a rank writes its report."""

    def __init__(self) -> None:
        super().__init__("SIGTERM")
        self.previous: Any = None

    @classmethod
    def install(cls) -> "_Hurry":
        """Turn SIGTERM into this exception until :meth:`restore` (main thread only)."""
        hurry = cls()
        if threading.current_thread() is threading.main_thread():
            def _raise(signum: int, frame: Any) -> None:
                raise cls()
            hurry.previous = signal.signal(signal.SIGTERM, _raise)
        return hurry

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _record(message: str, env: DistEnv) -> None:
    """Put the report in rank 0's log file (the console gets it as ``error: ...``)."""
    if not env.is_main:
        return
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            with contextlib.suppress(Exception):
                handler.emit(logger.makeRecord(logger.name, logging.ERROR, __file__,
                                               sys._getframe(1).f_lineno, message, None, None))
                handler.flush()


class _Holder:
    """The job this process belongs to (like torch.distributed's default group)."""

    job: _Job | None = None


def _start_job(env: DistEnv, backend: str, peer_timeout_s: float, patient_timeout_s: float,
               resume_from: Callable[[], str]) -> _Job:
    """Handshake in the job's store, then the process group under a fresh prefix."""
    timeout = timedelta(seconds=peer_timeout_s)
    store, _, _ = next(dist.rendezvous("env://", rank=env.rank, world_size=env.world_size,
                                       timeout=timeout))
    generation = _handshake(store, env, peer_timeout_s)
    job = _Job(env, store, generation, peer_timeout_s, patient_timeout_s, resume_from)
    dist.init_process_group(backend=backend, store=dist.PrefixStore(job.key("pg/"), store),
                            rank=env.rank, world_size=env.world_size, timeout=timeout)
    job.start_heartbeat()
    return job


def _handshake(store: Any, env: DistEnv, timeout_s: float) -> int:
    """This round's generation number, the same on every rank and never used before.

    Every rank other than 0 publishes a fresh nonce; rank 0 takes a new number
    from the store's counter and answers each nonce it reads (stale nonces of
    the previous round get answers nobody reads). A rank accepts only the answer
    to its own nonce, so it cannot join an earlier round; rank 0 goes on once
    every rank has confirmed. Bounded by ``timeout_s``; the error names who is missing.
    """
    world, rank = env.world_size, env.rank
    if rank != 0:
        nonce = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        store.set(f"{_NS}hello/{rank}", nonce)
        answer = f"{_NS}answer/{nonce}"
        try:
            store.wait([answer], timedelta(seconds=timeout_s))
        except dist.DistError as exc:
            raise PeerLostError(
                f"rank {rank} of {world}: no answer from rank 0 within {timeout_s:g} s "
                f"(TRAIN.peer_timeout): rank 0 did not start, or the job's store "
                f"({os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}) "
                f"is out of reach; torchrun restarts the group") from exc
        generation = int(store.get(answer))
        store.delete_key(answer)
        store.set(f"{_NS}{generation}/joined/{rank}", nonce)
        return generation
    deadline = time.monotonic() + timeout_s
    generation = int(store.add(f"{_NS}generation", 1))
    answered: set[str] = set()
    pending = list(range(1, world))
    for delay in _poll_delays():
        # hellos present now, though some may be the previous round's
        present = [r for r in pending if store.check([f"{_NS}hello/{r}"])]
        if present:
            nonces = [v.decode() for v in store.multi_get([f"{_NS}hello/{r}" for r in present])]
            fresh = [n for n in nonces if n not in answered]
            if fresh:
                store.multi_set([f"{_NS}answer/{n}" for n in fresh],
                                [str(generation)] * len(fresh))
                answered.update(fresh)
        pending = [r for r in pending if not store.check([f"{_NS}{generation}/joined/{r}"])]
        if not pending:
            return generation
        if time.monotonic() > deadline:
            raise PeerLostError(
                f"rank 0 of {world}: rank{'s' if len(pending) > 1 else ''} "
                f"{', '.join(map(str, pending))} did not join within {timeout_s:g} s "
                f"(TRAIN.peer_timeout); torchrun restarts the group")
        time.sleep(delay)
    raise AssertionError("unreachable")


def init_process_group(env: DistEnv, device: torch.device, timeout_s: float,
                       peer_timeout_s: float | None = None,
                       resume_from: Callable[[], str] | None = None) -> None:
    """Join the job's process group: NCCL when this rank trains on a GPU, gloo on the CPU.

    Waits (with a bound) until every rank of this round is there, as the
    module docstring explains. Collectives of the process group fail after
    ``peer_timeout_s`` seconds (default: ``timeout_s``), :func:`barrier` after
    ``timeout_s``. ``resume_from()`` says where a restart continues (for the
    report when the job breaks). No-op for a plain run or when a group exists.
    """
    if not env.enabled or dist.is_initialized():
        return
    for name, value in (("TRAIN.dist_timeout", timeout_s), ("TRAIN.peer_timeout", peer_timeout_s)):
        if value is not None and not float(value) > 0:
            raise ConfigError(f"{name} must be a number of seconds > 0, got {value}")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        for name, value in NCCL_WATCHDOG_ENV.items():
            os.environ.setdefault(name, value)
    peer = float(peer_timeout_s if peer_timeout_s is not None else timeout_s)
    try:
        _Holder.job = _start_job(env, backend, peer, float(timeout_s),
                                 resume_from or (lambda: "the newest state file (--resume auto)"))
        barrier(peer)  # every rank has its process group and its heartbeat
    except MitSemsegError:
        shutdown(failed=True)
        raise
    except Exception as exc:
        shutdown(failed=True)
        raise PeerLostError(f"rank {env.rank} of {env.world_size}: the process group did not "
                            f"come up: {_describe(exc)}; torchrun restarts the group") from exc


def shutdown(failed: bool = False) -> None:
    """Leave the process group, if one was started (``failed``: it may be broken, so it
    is not torn down collectively)."""
    job, _Holder.job = _Holder.job, None
    if job is not None:
        job.leave("failed" if failed else "done")
        serves_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
        if not failed and job.env.is_main and serves_store:
            job.linger()  # this process serves the store: stay until every rank said goodbye
    if dist.is_available() and dist.is_initialized():
        if failed and dist.get_backend() != "gloo":
            return  # a broken NCCL communicator can hang in its teardown; the process ends
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(env: DistEnv, device: torch.device, timeout_s: float, peer_timeout_s: float,
                  resume_from: Callable[[], str]) -> Iterator[None]:
    """:func:`init_process_group` on entry, :func:`shutdown` on exit; an error from the
    body that comes from a lost peer or a failed collective becomes
    :class:`PeerLostError` (one line naming the lost rank and ``resume_from()``)."""
    init_process_group(env, device, timeout_s, peer_timeout_s, resume_from)
    try:
        yield
    except BaseException as exc:
        job = _Holder.job
        replacement = job.failure(exc) if job is not None else None
        shutdown(failed=True)
        if replacement is not None:
            raise replacement from exc
        raise
    shutdown()


# ============================================================================ collectives

def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier(timeout_s: float | None = None) -> None:
    """Wait until every rank gets here, at most ``timeout_s`` seconds (default:
    ``TRAIN.dist_timeout``, for waits on rank 0's one-sided work: validation,
    checkpoint writing, downloads); the error names the ranks that did not arrive.
    gloo: a monitored barrier; NCCL: a barrier in the store."""
    if not _active():
        return
    job = _Holder.job
    if job is None:  # a process group this module did not start
        dist.barrier()
        return
    store, rank, world = job.store, job.env.rank, job.env.world_size
    timeout_s = job.patient_timeout_s if timeout_s is None else timeout_s
    if dist.get_backend() == "gloo":  # fails at once when a peer's sockets close
        dist.monitored_barrier(timeout=timedelta(seconds=timeout_s), wait_all_ranks=True)
        return
    # NCCL: in the store (a GPU barrier would be bound by the training-step timeout)
    job.barriers += 1
    key = job.key(f"barrier/{job.barriers}")
    store.set(f"{key}/{rank}", "")
    if int(store.add(key, 1)) == world:
        store.set(f"{key}/open", "")
        return
    deadline = time.monotonic() + timeout_s
    for delay in _poll_delays():
        if store.check([f"{key}/open"]):
            return
        if time.monotonic() > deadline:
            missing = [r for r in range(world) if not store.check([f"{key}/{r}"])]
            raise PeerLostError(job.message(missing, f"not at barrier {job.barriers} after "
                                                     f"{timeout_s:g} s (TRAIN.dist_timeout)"))
        time.sleep(delay)


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the ranks (a new tensor; NaN on any rank gives NaN everywhere)."""
    out = values.detach().clone()
    if _active():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects). Ranks may arrive far
    apart (rank 0 computing class weights): they meet at a :func:`barrier` first."""
    if not _active():
        return [obj]
    barrier()
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
