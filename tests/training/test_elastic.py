"""Multi-node faults under torchrun (mit_semseg.training.distributed, docs/training.md
"When a node dies"): gloo on the CPU, 127.0.0.1, a tiny model, a few iterations.

* kill -9 of a worker of one of two torchrun agents ("nodes"), three times in one
  job: every time the group restarts from the newest state file, and the final
  weights equal those of one node with two processes that never stopped;
* a peer that goes silent inside a training step (SIGSTOP: a node that lost power
  or network keeps its sockets open): the survivor exits within TRAIN.peer_timeout;
* a state file whose write was killed is never picked by --resume auto;
* the start-up handshake never lets a rank join with a previous round's addresses.

No sleeping: the tests poll for files and processes with deadlines.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from mit_semseg.checkpoints.files import atomic_save, load_file, remove_stale_temporaries
from mit_semseg.config import load_cfg
from mit_semseg.data.synthetic import make_synthetic_dataset
from mit_semseg.training import distributed as D
from mit_semseg.training.resume import resume_point
from mit_semseg.training.state import latest_state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_CLASS = 4
EPOCH_ITERS = 8  # one epoch; mid-epoch state files after iterations 2, 4 and 6
DEADLINE = 150  # seconds any one wait may take on a busy 2-core machine


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
            "TRAIN.peer_timeout", "4"]
    cfg_file = folder / "cfg.yaml"
    cfg_file.write_text(load_cfg(None, opts).dump())
    return folder, str(cfg_file)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1", **extra)


def _train(cfg: str, out) -> list[str]:
    return [os.path.join(ROOT, "train.py"), "--cfg", cfg, "--gpus", "cpu", "--resume", "auto",
            "DIR", str(out)]


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
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(c) for c in fh.read().split()]
    except OSError:
        return []


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
def test_kill_nine_three_times_restarts_and_ends_bit_identical(job, tmp_path):
    folder, cfg = job
    # Reference: one node, two processes, never interrupted.
    ref = tmp_path / "reference"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                           *_train(cfg, ref)], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=DEADLINE)
    assert proc.returncode == 0, proc.stderr[-3000:]

    out, port, logs = tmp_path / "run", _free_port(), []
    agents = []
    for node in range(2):
        logs.append(open(tmp_path / f"agent{node}.txt", "w+"))
        agents.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node",
             "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
             "--rdzv-id", "test", "--max-restarts", "3", "--monitor-interval", "1",
             *_train(cfg, out)], cwd=ROOT, env=_env(), stdout=logs[-1],
            stderr=subprocess.STDOUT, start_new_session=True))
    try:
        # kill -9 a worker right after each mid-epoch state file appears: rank 1, rank 0, rank 1
        for state, victim in ((2, 1), (4, 0), (6, 1)):
            path = out / f"state_iter_{state}.pth"
            _wait_for(lambda: path.is_file() or any(a.poll() is not None for a in agents),
                      f"{path.name}")
            assert all(a.poll() is None for a in agents), "an agent gave up"
            os.kill(_wait_for(lambda: _worker(agents, victim), f"worker of rank {victim}"),
                    signal.SIGKILL)
        for agent in agents:
            agent.wait(timeout=DEADLINE)
    finally:
        _stop(agents)
    text = ""
    for log in logs:
        log.seek(0)
        text += log.read()
        log.close()
    assert [a.returncode for a in agents] == [0, 0], text[-4000:]
    log_txt = (out / "log.txt").read_text()
    resumed = [line.split("Resuming from ")[1].split()[0] for line in log_txt.splitlines()
               if "Resuming from" in line]
    assert [os.path.basename(p) for p in resumed] == \
        ["state_iter_2.pth", "state_iter_4.pth", "state_iter_6.pth"]
    # the survivors said who was lost and where the restart resumes (when the agent's
    # SIGTERM did not end them first)
    assert "lost rank" in text and "resuming from" in text, text[-4000:]
    assert "Connection refused" not in text  # no rank met a previous round's address
    a, b = _weights(ref), _weights(out)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "restarted run differs from the reference"


def test_silent_peer_ends_the_survivor_within_peer_timeout(job, tmp_path):
    """Rank 1 stops (SIGSTOP) inside training: rank 0, blocked in a collective or a
    barrier, exits with status 1 within TRAIN.peer_timeout (4 s) plus the heartbeat's
    look (< 2 s) and names rank 1."""
    folder, cfg = job
    out, port = tmp_path / "run", _free_port()
    ranks = [subprocess.Popen([sys.executable, *_train(cfg, out)], cwd=ROOT,
                              env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) for r in range(2)]
    try:
        _wait_for(lambda: (out / "state_iter_2.pth").is_file() or ranks[0].poll() is not None,
                  "state_iter_2.pth")
        assert ranks[0].poll() is None, ranks[0].stderr.read()
        os.kill(ranks[1].pid, signal.SIGSTOP)
        start = time.monotonic()
        ranks[0].wait(timeout=60)
        took = time.monotonic() - start
    finally:
        _stop(ranks)
    err = ranks[0].stderr.read()
    assert ranks[0].returncode == 1, err[-3000:]
    assert took < 4 + 6, f"rank 0 took {took:.1f} s to give up on its silent peer"
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    assert "lost rank 1 (" in lines[0] and str(out / "state_iter_2.pth") in lines[0], lines[0]
    assert "lost rank 1" in (out / "log.txt").read_text()


# ----------------------------------------------------------------------------- state files

_SLOW_WRITER = textwrap.dedent("""
    import sys, torch
    import mit_semseg.checkpoints.files as files
    real_save = torch.save
    def stalled_save(obj, fh):
        # half of the real bytes, then hang until killed: a node dying mid-write
        import io
        buf = io.BytesIO(); real_save(obj, buf); data = buf.getvalue()
        fh.write(data[: len(data) // 2]); fh.flush()
        open(sys.argv[2], "w").close()
        sys.stdin.read()
    torch.save = stalled_save
    files.atomic_save({"version": 1, "global_iter": 4, "optimizers": {}}, sys.argv[1])
""")


def _state(global_iter: int) -> dict:
    return {"version": 1, "kind": "iter", "epoch": 1, "iteration": global_iter,
            "global_iter": global_iter, "epoch_iters": EPOCH_ITERS, "optimizers": {},
            "encoder": {"w": torch.zeros(2)}, "decoder": {"w": torch.ones(2)}}


def test_a_state_file_killed_while_written_is_never_picked(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    atomic_save(_state(2), str(run / "state_iter_2.pth"))
    marker = tmp_path / "halfway"
    writer = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(run / "state_iter_4.pth"),
                               str(marker)], stdin=subprocess.PIPE, env=_env())
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
