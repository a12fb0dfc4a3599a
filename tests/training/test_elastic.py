"""Multi-node faults under torchrun (mit_semseg.training.distributed, docs/training.md
"When a node dies"): gloo on the CPU, 127.0.0.1, a tiny model, a few iterations.

* kill -9 of a worker of one of two torchrun agents ("nodes"), twice in one job
  (rank 1's, then rank 0's): every time the group restarts from the newest state
  file, and the final weights equal those of one node with two processes that
  never stopped (tools/elastic_drill.py repeats this many times);
* a peer that goes silent inside a training step (SIGSTOP: a node that lost power
  or network keeps its sockets open): the survivor exits within TRAIN.peer_timeout;
* a state file whose write was killed is never picked by --resume auto;
* the start-up handshake never lets a rank join with a previous round's addresses.

No sleeping: the tests poll for files and processes with deadlines.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from _support import free_port
from mit_semseg.checkpoints.files import atomic_save, load_file, remove_stale_temporaries
from mit_semseg.config import load_cfg
from mit_semseg.data.synthetic import make_synthetic_dataset
from mit_semseg.training import distributed as D
from mit_semseg.training.resume import resume_point
from mit_semseg.training.state import latest_state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("tools_elastic_drill",
                                               os.path.join(ROOT, "tools", "elastic_drill.py"))
_DRILL = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _DRILL  # its dataclasses look their module up there
_spec.loader.exec_module(_DRILL)
NUM_CLASS = 4
EPOCH_ITERS = 6  # one epoch; mid-epoch state files after iterations 2 and 4
DEADLINE = 150  # seconds any one wait may take on a busy 2-core machine
PEER_TIMEOUT = 4  # seconds of silence before a survivor gives up (the silent-peer test)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A tiny dataset and config file: (folder, config path)."""
    folder = tmp_path_factory.mktemp("elastic")
    data = str(folder / "data")
    make_synthetic_dataset(data, num_train=8, num_val=1, size_range=(32, 48), num_class=NUM_CLASS)
    opts = ["DATASET.root_dataset", data, "DATASET.list_train",
            os.path.join(data, "training.odgt"), "DATASET.num_class", str(NUM_CLASS),
            "DATASET.imgSizes", "(32,)", "DATASET.imgMaxSize", "48",
            "MODEL.arch_encoder", "mobilenetv2dilated", "MODEL.arch_decoder", "c1_deepsup",
            "MODEL.fc_dim", "320", "MODEL.pretrained", "False",
            "TRAIN.batch_size_per_gpu", "2", "TRAIN.num_epoch", "1",
            "TRAIN.epoch_iters", str(EPOCH_ITERS), "TRAIN.checkpoint_every", "2",
            "TRAIN.workers", "0", "TRAIN.disp_iter", "1", "TRAIN.num_threads", "1",
            "TRAIN.peer_timeout", "30"]
    cfg_file = folder / "cfg.yaml"
    cfg_file.write_text(load_cfg(None, opts).dump())
    return folder, str(cfg_file)


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1", **extra)


def _train(cfg: str, out, *opts: str) -> list[str]:
    return [os.path.join(ROOT, "train.py"), "--cfg", cfg, "--gpus", "cpu", "--resume", "auto",
            "DIR", str(out), *opts]


def _wait_for(predicate, what: str, deadline_s: float = DEADLINE, poll: float = 0.02):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        threading.Event().wait(poll)  # a poll interval, not a sleep standing in for sync
    raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")


def _worker(agents: list[subprocess.Popen], rank: int) -> int | None:
    """PID of the torchrun worker with RANK ``rank`` (a child of one of the agents)."""
    for agent in agents:
        for pid in _children(agent.pid):
            try:
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    if f"\0RANK={rank}\0".encode() in b"\0" + fh.read():
                        return pid
            except OSError:
                continue
    return None


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (the drill tool's reading of /proc)."""
    return _DRILL.children(pid)


def _stop(procs) -> None:
    """SIGKILL what a test started: its processes' sessions and those of their children
    (torchrun starts every worker in a session of its own)."""
    for pid in [p.pid for p in procs if p.poll() is None] + \
            [c for p in procs for c in _children(p.pid)]:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for p in procs:
        p.wait(timeout=30)


def _weights(out) -> dict[str, torch.Tensor]:
    found = {}
    for kind in ("encoder", "decoder"):
        for key, value in load_file(os.path.join(out, f"{kind}_epoch_1.pth")).items():
            found[f"{kind}.{key}"] = value
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds workers through /proc")
def test_kill_nine_restarts_the_group_and_ends_bit_identical(job, tmp_path):
    folder, cfg = job
    # Reference, at the same time: two processes on one machine, never interrupted.
    ref, out, port, logs = tmp_path / "reference", tmp_path / "run", free_port(), []
    ref_port = str(free_port())
    procs = [subprocess.Popen([sys.executable, *_train(cfg, ref)], cwd=ROOT,
                              env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=ref_port),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) for r in range(2)]
    agents = []
    for node in range(2):
        logs.append(open(tmp_path / f"agent{node}.txt", "w+"))
        agents.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node",
             "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
             "--rdzv-id", "test", "--max-restarts", "2", "--monitor-interval", "1",
             *_train(cfg, out)], cwd=ROOT, env=_env(), stdout=logs[-1],
            stderr=subprocess.STDOUT, start_new_session=True))
    procs += agents
    try:
        # kill -9 a worker right after each mid-epoch state file appears: rank 1's, then rank 0's
        for state, victim in ((2, 1), (4, 0)):
            path = out / f"state_iter_{state}.pth"
            _wait_for(lambda: path.is_file() or any(a.poll() is not None for a in agents),
                      f"{path.name}")
            assert all(a.poll() is None for a in agents), "an agent gave up"
            os.kill(_wait_for(lambda: _worker(agents, victim), f"worker of rank {victim}"),
                    signal.SIGKILL)
        for p in procs:
            p.wait(timeout=DEADLINE)
    finally:
        _stop(procs)
    text = ""
    for log in logs:
        log.seek(0)
        text += log.read()
        log.close()
    for p in procs[:2]:
        assert p.returncode == 0, p.stderr.read()[-3000:]
    assert [a.returncode for a in agents] == [0, 0], text[-4000:]
    log_txt = (out / "log.txt").read_text()
    resumed = [line.split("Resuming from ")[1].split()[0] for line in log_txt.splitlines()
               if "Resuming from" in line]
    assert [os.path.basename(p) for p in resumed] == ["state_iter_2.pth", "state_iter_4.pth"]
    # a survivor said who was lost and where the restart resumes (unless the agent's
    # SIGTERM ended both first)
    assert "lost rank" in text and "resuming from" in text, text[-4000:]
    assert "Connection refused" not in text  # no rank met a previous round's address
    a, b = _weights(ref), _weights(out)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "restarted run differs from the reference"


_PEER = textwrap.dedent("""
    import sys, threading, torch
    from mit_semseg.runtime.command import run_command
    from mit_semseg.training import distributed as D
    peer_timeout, marker, where = float(sys.argv[1]), sys.argv[2], sys.argv[3]

    def body():
        env = D.from_environment()
        with D.process_group(env, torch.device("cpu"), 600.0, peer_timeout,
                             lambda: "DIR/state_iter_2.pth"):
            for i in range(1000000):
                D.all_reduce_mean(torch.ones(4))  # a training step's collective
                if i == 20:
                    open(marker + str(env.rank), "w").close()
                    if where == "barrier":  # rank 0 waits for rank 1's one-sided work
                        if env.rank == 0:
                            D.barrier()
                        else:
                            threading.Event().wait()
    sys.exit(run_command(body))
""")


def test_silent_peer_ends_the_survivor_within_peer_timeout(tmp_path):
    """Rank 1 stops (SIGSTOP) while rank 0 waits for it in a training step's collective,
    or (a second pair of ranks, at the same time) in a barrier of its own, bounded by
    TRAIN.dist_timeout (here 600 s): rank 0 exits with status 1 within
    TRAIN.peer_timeout (4 s) plus a look at the heartbeats, with one line naming
    rank 1 and the state file."""
    pairs = {}
    for where in ("collective", "barrier"):
        port, marker = free_port(), str(tmp_path / f"{where}-running")
        pairs[where] = (marker, [subprocess.Popen(
            [sys.executable, "-c", _PEER, str(PEER_TIMEOUT), marker, where], cwd=ROOT,
            env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(port)),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True) for r in range(2)])
    everyone = [p for _, ranks in pairs.values() for p in ranks]
    took = {}
    try:
        for where, (marker, ranks) in pairs.items():
            _wait_for(lambda: all(os.path.exists(marker + str(r)) for r in range(2))
                      or ranks[0].poll() is not None, f"both ranks running ({where})")
            assert ranks[0].poll() is None, ranks[0].stderr.read()
        for where, (_, ranks) in pairs.items():
            os.kill(ranks[1].pid, signal.SIGSTOP)
            took[where] = time.monotonic()
        for where, (_, ranks) in pairs.items():
            ranks[0].wait(timeout=60)
            took[where] = time.monotonic() - took[where]
    finally:
        _stop(everyone)
    for where, (_, ranks) in pairs.items():
        err = ranks[0].stderr.read()
        assert ranks[0].returncode == 1, (where, err[-3000:])
        assert PEER_TIMEOUT - 2 < took[where] < PEER_TIMEOUT + 5, \
            f"{where}: rank 0 gave up after {took[where]:.1f} s"
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1, (where, err[-3000:])
        assert lines[0].startswith("error: rank 0 of 2 stops: lost rank 1 (") and \
            lines[0].endswith("torchrun restarts the group, resuming from DIR/state_iter_2.pth")


# ----------------------------------------------------------------------------- state files

_SLOW_WRITER = textwrap.dedent("""
    import importlib.util, sys
    # the package's one atomic writer, loaded alone (no torch: a quick child)
    spec = importlib.util.spec_from_file_location("_atomic", sys.argv[1])
    atomic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(atomic)
    data = open(sys.argv[3], "rb").read()

    def stalled(fh):  # half of the bytes, then hang until killed: a node dying mid-write
        fh.write(data[: len(data) // 2])
        fh.flush()
        open(sys.argv[4], "w").close()
        sys.stdin.read()
    atomic.atomic_write_stream(sys.argv[2], stalled)
""")


def _state(global_iter: int) -> dict:
    return {"version": 1, "kind": "iter", "epoch": 1, "iteration": global_iter,
            "global_iter": global_iter, "epoch_iters": EPOCH_ITERS, "optimizers": {},
            "encoder": {"w": torch.zeros(2)}, "decoder": {"w": torch.ones(2)}}


def test_a_state_file_killed_while_written_is_never_picked(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    atomic_save(_state(2), str(run / "state_iter_2.pth"))
    marker, whole = tmp_path / "halfway", tmp_path / "state_iter_4.bytes"
    torch.save(_state(4), str(whole))  # what atomic_save would stream for this state
    writer = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER,
                               os.path.join(ROOT, "mit_semseg", "checkpoints", "_atomic.py"),
                               str(run / "state_iter_4.pth"), str(whole), str(marker)],
                              stdin=subprocess.PIPE, env=_env())
    try:
        _wait_for(marker.is_file, "the writer to be half-way", 60)
    finally:
        writer.kill()
        writer.wait(timeout=30)
    names = sorted(os.listdir(run))
    assert names[0].startswith(".state_iter_4.pth.") and names[0].endswith(".tmp")
    assert names[1:] == ["state_iter_2.pth"]  # no state_iter_4.pth, whole or partial
    assert latest_state(str(run), EPOCH_ITERS) == str(run / "state_iter_2.pth")
    cfg = load_cfg(None, ["DIR", str(run), "TRAIN.epoch_iters", str(EPOCH_ITERS)])
    assert resume_point(cfg, "auto").source == str(run / "state_iter_2.pth")
    assert remove_stale_temporaries(str(run)) == [str(run / names[0])]


def test_resume_auto_skips_a_damaged_newest_state(tmp_path, caplog):
    atomic_save(_state(2), str(tmp_path / "state_iter_2.pth"))
    (tmp_path / "state_iter_4.pth").write_bytes(b"PK\x03\x04 not a whole zip")
    cfg = load_cfg(None, ["DIR", str(tmp_path), "TRAIN.epoch_iters", str(EPOCH_ITERS)])
    with caplog.at_level("WARNING", logger="Logger"):
        point = resume_point(cfg, "auto")
    assert point.source == str(tmp_path / "state_iter_2.pth") and point.start_iter == 2
    assert "skipping" in caplog.text and "state_iter_4.pth" in caplog.text


# ----------------------------------------------------------------------------- start-up

def _handshake_in_threads(store_port: int, world: int, ranks, timeout_s: float) -> dict:
    results: dict = {}

    def run(rank: int) -> None:
        client = dist.TCPStore("127.0.0.1", store_port, world, False,
                               timeout=timedelta(seconds=30))
        try:
            results[rank] = D._handshake(client, D.DistEnv(rank, world, rank, True), timeout_s)
        except Exception as exc:  # recorded for the assertions
            results[rank] = exc

    threads = [threading.Thread(target=run, args=(r,)) for r in ranks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_handshake_gives_every_rank_a_fresh_generation_despite_stale_keys():
    server = dist.TCPStore("127.0.0.1", 0, 1, True, timeout=timedelta(seconds=30))
    first = _handshake_in_threads(server.port, 3, range(3), 30)
    assert first[0] == first[1] == first[2] and isinstance(first[0], int)
    # The previous round's hellos and answers are still in the store (torchrun's agent
    # keeps it): the next round still agrees on a new number.
    second = _handshake_in_threads(server.port, 3, range(3), 30)
    assert second[0] == second[1] == second[2] and second[0] > first[0]


def test_handshake_names_the_rank_that_never_joins():
    server = dist.TCPStore("127.0.0.1", 0, 1, True, timeout=timedelta(seconds=30))
    results = _handshake_in_threads(server.port, 3, [0, 1], 0.5)
    assert isinstance(results[0], D.PeerLostError)
    assert "rank 0 of 3: rank 2 did not join within 0.5 s" in str(results[0])
    assert isinstance(results[1], int)  # answered; its process group would wait for rank 2
    alone = _handshake_in_threads(server.port, 3, [2], 0.5)  # and rank 0 never comes
    assert isinstance(alone[2], D.PeerLostError)
    assert "rank 2 of 3: no answer from rank 0 within 0.5 s" in str(alone[2])


# ----------------------------------------------------------------------------- the report

def _job_of_rank0(store, peer_timeout_s: float = 1.0) -> D._Job:
    job = D._Job(D.DistEnv(0, 2, 0, True), store, 7, peer_timeout_s, 60.0,
                 lambda: "DIR/state_iter_8.pth")
    store.set(job.key("who/1"), "node-b pid 4321")
    store.set(job.key("beat/1"), "5")
    return job


def test_failure_names_the_silent_rank_and_the_state_file():
    store = dist.TCPStore("127.0.0.1", 0, 1, True, timeout=timedelta(seconds=30))
    job = _job_of_rank0(store)
    error = job.failure(RuntimeError("[pair.cc:553] Connection closed by peer [10.0.0.2]:4711. "
                                     "This is typically caused by a remote worker crashing"))
    assert isinstance(error, D.PeerLostError)
    assert str(error) == ("rank 0 of 2 stops: lost rank 1 (node-b pid 4321): RuntimeError: "
                          "Connection closed by peer [10.0.0.2]:4711; torchrun restarts the "
                          "group, resuming from DIR/state_iter_8.pth")
    assert store.get(job.key("left/0")).startswith(b"failed: ")  # peers will not blame rank 0


def test_failure_of_a_peer_with_its_own_error_is_not_called_lost():
    store = dist.TCPStore("127.0.0.1", 0, 1, True, timeout=timedelta(seconds=30))
    job = _job_of_rank0(store)
    store.set(job.key("left/1"), "failed: CheckpointError: state_iter_8.pth is damaged")
    error = job.failure(RuntimeError("Connection closed by peer"))
    assert "stops: rank 1 (node-b pid 4321) failed (CheckpointError: state_iter_8.pth is " \
           "damaged)" in str(error)
    # an error of this rank's own (not from the transport) stays what it is
    job2 = _job_of_rank0(dist.TCPStore("127.0.0.1", 0, 1, True, timeout=timedelta(seconds=30)))
    job2.store.set(job2.key("left/1"), "done")
    assert job2.failure(ValueError("a bug")) is None
