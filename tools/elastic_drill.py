"""Fault drill for multi-node training under torchrun (docs/training.md, "When a node dies").

Two torchrun agents on 127.0.0.1 stand for two nodes (``--nnodes 2
--nproc_per_node 1``, c10d rendezvous, gloo on the CPU, ``--resume auto``) and
train a tiny model on synthetic data. Three drills:

``kill``  N times: SIGKILL one worker right after a mid-epoch state file
          appears; report recoveries / failures / hangs, the time from the kill
          to training again (the first iteration logged after the restart) and
          whether the final weights equal those of an uninterrupted run bit for bit.
``hang``  one worker is stopped (SIGSTOP: a node that vanished without closing
          its sockets) or killed (SIGKILL) while the other is inside a training
          step's collective; report how long the survivor takes to exit (capped).
``same``  the uninterrupted two-agent run against one node with two processes,
          and (``--against CHECKOUT``) one process, ``torchrun --nproc_per_node 2``
          and two agents of this checkout against another checkout: final weights
          compared bit for bit.

``--checkout DIR`` runs the train.py of another checkout (e.g. the base commit
cloned to /tmp) with this checkout's tool. Not installed; a developer tool.

    python tools/elastic_drill.py kill --runs 10
    python tools/elastic_drill.py hang --signal STOP --cap 120
    python tools/elastic_drill.py same --against /tmp/elastic-base
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import yaml  # noqa: E402

from mit_semseg.config import load_cfg  # noqa: E402
from mit_semseg.data.synthetic import make_synthetic_dataset  # noqa: E402

NUM_CLASS = 4
EPOCH_ITERS, NUM_EPOCH, CHECKPOINT_EVERY = 6, 2, 2


# ----------------------------------------------------------------------------- set-up

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_config(work: str, extra: list[str]) -> str:
    data = os.path.join(work, "data")
    if not os.path.isfile(os.path.join(data, "training.odgt")):
        make_synthetic_dataset(data, num_train=8, num_val=1, size_range=(32, 56),
                               num_class=NUM_CLASS)
    opts = ["DATASET.root_dataset", data, "DATASET.list_train",
            os.path.join(data, "training.odgt"), "DATASET.num_class", str(NUM_CLASS),
            "DATASET.imgSizes", "(32,)", "DATASET.imgMaxSize", "64",
            "MODEL.arch_encoder", "mobilenetv2dilated", "MODEL.arch_decoder", "c1_deepsup",
            "MODEL.fc_dim", "320", "MODEL.pretrained", "False",
            "TRAIN.batch_size_per_gpu", "2", "TRAIN.num_epoch", str(NUM_EPOCH),
            "TRAIN.epoch_iters", str(EPOCH_ITERS), "TRAIN.checkpoint_every",
            str(CHECKPOINT_EVERY), "TRAIN.workers", "0", "TRAIN.disp_iter", "1",
            "TRAIN.num_threads", "1"]
    cfg = load_cfg(None, opts + extra)  # checks the keys
    # Only the keys set here, so that an older checkout (--checkout) reads the file too.
    doc: dict = {}
    for key, _ in zip(opts[::2], opts[1::2]):
        section, name = key.split(".")
        doc.setdefault(section, {})[name] = _plain(cfg[section][name])
    path = os.path.join(work, "drill.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(doc, fh)
    return path


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    return env


def _train_args(checkout: str, cfg: str, out: str, overrides: list[str]) -> list[str]:
    return [os.path.join(checkout, "train.py"), "--cfg", cfg, "--gpus", "cpu", "--resume", "auto",
            "DIR", out, *overrides]


def _agents(checkout: str, cfg: str, out: str, overrides: list[str], max_restarts: int,
            logs: str) -> list[subprocess.Popen]:
    """Two torchrun agents (two 'nodes') in their own sessions; output in ``logs``/agent*.txt."""
    port = _free_port()
    procs = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
               "--nproc_per_node", "1", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "drill",
               "--max-restarts", str(max_restarts), "--monitor-interval", "1",
               *_train_args(checkout, cfg, out, overrides)]
        log = open(os.path.join(logs, f"agent{node}.txt"), "w")
        procs.append(subprocess.Popen(cmd, cwd=checkout, env=_env(), stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))
        log.close()
    return procs


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGKILL the sessions this tool started: the agents' and their workers' (each
    worker is a session of its own, with its loader processes)."""
    workers = [pid for p in procs for pid in children(p.pid)]
    for pid in [p.pid for p in procs if p.poll() is None] + workers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=10)


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(c) for c in fh.read().split()]
    except OSError:
        return []


def _worker_of_rank(agents: list[subprocess.Popen], rank: int) -> int | None:
    """PID of the worker with RANK ``rank`` among the agents' children."""
    for agent in agents:
        for pid in children(agent.pid):
            try:
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    env = dict(item.split(b"=", 1) for item in fh.read().split(b"\0")
                               if b"=" in item)
            except OSError:
                continue
            if env.get(b"RANK") == str(rank).encode():
                return pid
    return None


def _wait_for(predicate, deadline: float, poll: float = 0.05):
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    return None


def _final_weights(out: str) -> dict[str, torch.Tensor] | None:
    weights = {}
    for kind in ("encoder", "decoder"):
        path = os.path.join(out, f"{kind}_epoch_{NUM_EPOCH}.pth")
        if not os.path.isfile(path):
            return None
        for key, value in torch.load(path, map_location="cpu", weights_only=True).items():
            weights[f"{kind}.{key}"] = value
    return weights


def _same(a: dict | None, b: dict | None) -> bool:
    return a is not None and b is not None and a.keys() == b.keys() and \
        all(torch.equal(a[k], b[k]) for k in a)


def _tail(logs: str, lines: int = 6) -> str:
    out = []
    for name in sorted(os.listdir(logs)):
        with open(os.path.join(logs, name), errors="replace") as fh:
            text = [ln.rstrip() for ln in fh if ln.strip()]
        interesting = [ln for ln in text if "rror" in ln or "lost" in ln or "Exception" in ln]
        out += [f"    {name}: {ln[:200]}" for ln in (interesting or text)[-lines:]]
    return "\n".join(out)


def _uninterrupted(checkout: str, cfg: str, work: str, name: str, overrides: list[str],
                   deadline_s: float) -> tuple[dict | None, float]:
    """Two agents, no fault: final weights and wall time."""
    out, logs = os.path.join(work, name), os.path.join(work, name + "-logs")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(logs, exist_ok=True)
    t0 = time.monotonic()
    agents = _agents(checkout, cfg, out, overrides, 0, logs)
    try:
        for a in agents:
            a.wait(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        print(f"  {name}: did not finish in {deadline_s:.0f} s\n{_tail(logs)}")
    finally:
        _stop(agents)
    codes = [a.returncode for a in agents]
    if codes != [0, 0]:
        print(f"  {name}: agents exited {codes}\n{_tail(logs)}")
    return _final_weights(out), time.monotonic() - t0


# ----------------------------------------------------------------------------- kill drill

@dataclass
class KillResult:
    outcome: str  # recovered / failed / hang
    identical: bool = False
    to_training_s: float | None = None
    restarts: int = 0
    note: str = field(default="")


def _log_after(path: str, offset: int) -> str:
    try:
        with open(path, errors="replace") as fh:
            fh.seek(offset)
            return fh.read()
    except OSError:
        return ""


def _kill_once(checkout: str, cfg: str, work: str, index: int, victim: int, after_iter: int,
               overrides: list[str], reference: dict | None, deadline_s: float) -> KillResult:
    out, logs = os.path.join(work, f"kill{index}"), os.path.join(work, f"kill{index}-logs")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
    os.makedirs(logs)
    agents = _agents(checkout, cfg, out, overrides, 2, logs)
    state = os.path.join(out, f"state_iter_{after_iter}.pth")
    log_txt = os.path.join(out, "log.txt")
    try:
        if not _wait_for(lambda: os.path.isfile(state) or any(a.poll() is not None for a in agents),
                         time.monotonic() + deadline_s) or not os.path.isfile(state):
            return KillResult("failed", note=f"{os.path.basename(state)} never appeared\n"
                                             f"{_tail(logs)}")
        pid = _worker_of_rank(agents, victim)
        if pid is None:
            return KillResult("failed", note=f"no worker of rank {victim} found")
        offset = os.path.getsize(log_txt) if os.path.isfile(log_txt) else 0
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        end = t_kill + deadline_s
        t_train = None
        while time.monotonic() < end:
            if t_train is None:
                text = _log_after(log_txt, offset)
                resumed = text.find("Resuming from")
                if resumed >= 0 and "Epoch: [" in text[resumed:]:
                    t_train = time.monotonic() - t_kill
            if all(a.poll() is not None for a in agents):
                break
            time.sleep(0.05)
        restarts = _log_after(log_txt, offset).count("Resuming from")
        if any(a.poll() is None for a in agents):
            return KillResult("hang", to_training_s=t_train, restarts=restarts,
                              note=f"agents still running {deadline_s:.0f} s after the kill\n"
                                   f"{_tail(logs)}")
        codes = [a.returncode for a in agents]
        if codes != [0, 0]:
            return KillResult("failed", to_training_s=t_train, restarts=restarts,
                              note=f"agents exited {codes}\n{_tail(logs)}")
        return KillResult("recovered", _same(_final_weights(out), reference), t_train, restarts)
    finally:
        _stop(agents)


def drill_kill(args: argparse.Namespace, cfg: str) -> int:
    overrides = list(args.opts)
    print(f"train.py of {args.checkout}; {args.runs} runs; SIGKILL after state_iter_"
          f"{args.after}.pth appears; victim {args.victim}")
    reference, secs = _uninterrupted(args.checkout, cfg, args.work, "reference", overrides,
                                     args.deadline)
    print(f"uninterrupted two-agent run: {secs:.1f} s" +
          ("" if reference is not None else " (FAILED: no reference weights)"))
    results = []
    for i in range(args.runs):
        victim = {"rank0": 0, "rank1": 1}.get(args.victim, i % 2)
        r = _kill_once(args.checkout, cfg, args.work, i, victim, args.after, overrides, reference,
                       args.deadline)
        results.append(r)
        back = f"{r.to_training_s:.1f} s" if r.to_training_s is not None else "-"
        print(f"run {i + 1:2d}: killed rank {victim}: {r.outcome:9s} training again after {back}, "
              f"restarts {r.restarts}, final weights "
              f"{'bit-identical' if r.identical else 'NOT identical / missing'}"
              + (f"\n{r.note}" if r.note else ""), flush=True)
    count = {k: sum(r.outcome == k for r in results) for k in ("recovered", "failed", "hang")}
    times = sorted(r.to_training_s for r in results if r.to_training_s is not None)
    identical = sum(r.identical for r in results)
    print(f"\nsummary: {count['recovered']} recovered, {count['failed']} failed, "
          f"{count['hang']} hung (of {len(results)}); final weights bit-identical in {identical}")
    if times:
        print(f"kill -> training again: median {times[len(times) // 2]:.1f} s, "
              f"min {times[0]:.1f} s, max {times[-1]:.1f} s")
    return 0 if identical == len(results) else 1


# ----------------------------------------------------------------------------- hang drill

def drill_hang(args: argparse.Namespace, cfg: str) -> int:
    out, logs = os.path.join(args.work, "hang"), os.path.join(args.work, "hang-logs")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
    os.makedirs(logs)
    sig = signal.SIGSTOP if args.signal == "STOP" else signal.SIGKILL
    # No restarts: the survivor's own exit is what is measured.
    agents = _agents(args.checkout, cfg, out, list(args.opts), 0, logs)
    victim_pid = None
    try:
        state = os.path.join(out, f"state_iter_{args.after}.pth")
        if not _wait_for(lambda: os.path.isfile(state), time.monotonic() + 300):
            print(f"{os.path.basename(state)} never appeared\n{_tail(logs)}")
            return 1
        victim_pid, survivor = _worker_of_rank(agents, 1), _worker_of_rank(agents, 0)
        os.kill(victim_pid, sig)
        t0 = time.monotonic()
        gone = _wait_for(lambda: not os.path.exists(f"/proc/{survivor}") or
                         _zombie(survivor), t0 + args.cap, poll=0.05)
        took = time.monotonic() - t0
        if gone:
            print(f"SIG{args.signal} rank 1 inside training: rank 0 exited after {took:.1f} s")
        else:
            print(f"SIG{args.signal} rank 1 inside training: rank 0 still blocked after "
                  f"{args.cap:.0f} s (> {args.cap:.0f} s)")
        print(_tail(logs, 4))
        return 0
    finally:
        if victim_pid is not None and sig == signal.SIGSTOP:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim_pid, signal.SIGKILL)
        _stop(agents)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


# ----------------------------------------------------------------------------- same weights

def _single(checkout: str, cfg: str, out: str, overrides: list[str], nproc: int,
            deadline_s: float) -> dict | None:
    shutil.rmtree(out, ignore_errors=True)
    args = _train_args(checkout, cfg, out, overrides)
    if nproc == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]
    proc = subprocess.run(cmd, cwd=checkout, env=_env(), capture_output=True, text=True,
                          timeout=deadline_s)
    if proc.returncode != 0:
        print(f"  {' '.join(cmd[:4])}... exited {proc.returncode}:\n{proc.stderr[-1500:]}")
    return _final_weights(out)


def drill_same(args: argparse.Namespace, cfg: str) -> int:
    ok = True
    checkouts = [args.checkout] + ([args.against] if args.against else [])
    found: dict[str, dict[str, dict | None]] = {}
    for n, checkout in enumerate(checkouts):
        tag = f"c{n}"
        w = {"one process": _single(checkout, cfg, os.path.join(args.work, f"{tag}-one"),
                                    list(args.opts), 1, args.deadline),
             "torchrun --nproc_per_node 2": _single(
                 checkout, cfg, os.path.join(args.work, f"{tag}-two"), list(args.opts), 2,
                 args.deadline),
             "two agents (2 nodes x 1)": _uninterrupted(checkout, cfg, args.work, f"{tag}-nodes",
                                                        list(args.opts), args.deadline)[0]}
        found[checkout] = w
        same = _same(w["torchrun --nproc_per_node 2"], w["two agents (2 nodes x 1)"])
        ok &= same
        print(f"{checkout}: two agents == one node with 2 processes: {same}")
    if args.against:
        for kind in found[args.checkout]:
            same = _same(found[args.checkout][kind], found[args.against][kind])
            ok &= same
            print(f"{kind}: {args.checkout} == {args.against}: {same}")
    return 0 if ok else 1


# ----------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("drill", choices=("kill", "hang", "same"))
    parser.add_argument("--runs", type=int, default=10, help="kill: repetitions (10)")
    parser.add_argument("--victim", choices=("rank0", "rank1", "alternate"), default="alternate",
                        help="kill: whose worker dies (alternate: rank 0 in odd runs)")
    parser.add_argument("--after", type=int, default=8,
                        help="the state_iter_G.pth file whose appearance triggers the fault (8)")
    parser.add_argument("--signal", choices=("STOP", "KILL"), default="STOP",
                        help="hang: SIGSTOP (a silent node) or SIGKILL")
    parser.add_argument("--cap", type=float, default=120, help="hang: seconds to wait at most")
    parser.add_argument("--deadline", type=float, default=240,
                        help="seconds a run may take after its fault before it counts as hung")
    parser.add_argument("--checkout", default=ROOT, help="the checkout whose train.py runs")
    parser.add_argument("--against", default="", help="same: another checkout to compare with")
    parser.add_argument("--work", default="", help="work folder (default: a new temporary one)")
    parser.add_argument("opts", nargs="*", default=[], help="KEY VALUE overrides for train.py")
    args = parser.parse_intermixed_args()
    args.checkout = os.path.abspath(args.checkout)
    args.work = args.work or tempfile.mkdtemp(prefix="elastic_drill_")
    os.makedirs(args.work, exist_ok=True)
    print(f"work folder: {args.work}")
    cfg = _write_config(args.work, [])
    return {"kill": drill_kill, "hang": drill_hang, "same": drill_same}[args.drill](args, cfg)


if __name__ == "__main__":
    sys.exit(main())
