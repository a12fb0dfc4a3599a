"""The original implementation, run in a worker process (the benchmark's
``--compare-original``; a developer tool, not installed with the package).

``OriginalWorker`` starts ``PYTHON -P tools/original_worker.py --worker`` and
talks JSON lines over its pipes. The worker runs under the original's
interpreter without this package on its path: at module level it imports only
the standard library, numpy and torch, and loads the benchmark's
``harness.py`` (same constraint) by file path; it builds models with the
``mit_semseg`` that interpreter imports.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

import torch
import torch.nn as nn

_HARNESS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "mit_semseg", "benchmark", "harness.py")
if "mit_semseg.benchmark.harness" in sys.modules:
    harness = sys.modules["mit_semseg.benchmark.harness"]
else:  # loaded by file path: under the original's interpreter this package is not importable
    _spec = importlib.util.spec_from_file_location("_semseg_bench_harness", _HARNESS)
    assert _spec is not None and _spec.loader is not None
    harness = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = harness
    _spec.loader.exec_module(harness)
MemoryProbe = harness.MemoryProbe
original_inference, original_train_step = harness.original_inference, harness.original_train_step


def group_weight(module: nn.Module) -> list[dict[str, Any]]:
    """The original's SGD groups: conv/linear weights decayed; their biases and
    BatchNorm parameters not."""
    decay, no_decay = [], []
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            decay.append(m.weight)
            if m.bias is not None:
                no_decay.append(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.weight is not None:
                no_decay.append(m.weight)
            if m.bias is not None:
                no_decay.append(m.bias)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def _worker_main() -> None:  # pragma: no cover - exercised through --compare-original
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to stderr
    sys.stdout = sys.stderr
    state: dict[str, Any] = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            reply = _worker_command(cmd, state)
        except Exception as exc:  # report, keep serving
            import traceback
            reply = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()
        if cmd.get("cmd") == "quit":
            break


def _build(cmd: dict, use_softmax: bool) -> tuple[nn.Module, nn.Module]:
    """Encoder and decoder from the interpreter's ``mit_semseg`` (the original's)."""
    from mit_semseg.models import ModelBuilder
    enc = ModelBuilder.build_encoder(arch=cmd["enc"], fc_dim=cmd["fc_dim"],
                                     weights=cmd["enc_weights"])
    dec = ModelBuilder.build_decoder(arch=cmd["dec"], fc_dim=cmd["fc_dim"],
                                     num_class=cmd["num_class"], weights=cmd["dec_weights"],
                                     use_softmax=use_softmax)
    return enc, dec


def _worker_command(cmd: dict, state: dict) -> dict:  # pragma: no cover
    op = cmd["cmd"]
    device = torch.device(cmd.get("device", "cpu"))
    if op == "hello":
        import mit_semseg
        if cmd.get("threads"):
            torch.set_num_threads(int(cmd["threads"]))
        return {"mit_semseg_file": os.path.abspath(mit_semseg.__file__),
                "version": getattr(mit_semseg, "__version__", None),
                "torch": torch.__version__, "threads": torch.get_num_threads(),
                "python": sys.version.split()[0]}
    if op == "quit":
        return {"ok": True}
    if op == "free":
        state.pop(cmd["key"], None)
        return {"ok": True}
    if op == "load_infer":
        enc, dec = _build(cmd, use_softmax=True)
        state[cmd["key"]] = (enc.to(device).eval(), dec.to(device).eval(),
                             torch.load(cmd["inputs"], weights_only=True))
        return {"ok": True}
    if op == "infer":
        enc, dec, imgs = state[cmd["key"]]
        keep = bool(cmd.get("labels_out"))
        with MemoryProbe(device) as mem:
            labels, times = original_inference(enc, dec, imgs, tuple(cmd["size"]),
                                                cmd["num_class"], device, gap=keep)
        if keep:
            torch.save({"labels": labels, "gap": times.pop("gap")}, cmd["labels_out"])
        return {**times, "peak_mb": mem.peak_mb, "delta_mb": mem.delta_mb}
    if op == "load_train":
        from mit_semseg.models import SegmentationModule
        enc, dec = _build(cmd, use_softmax=False)
        module = SegmentationModule(enc, dec, nn.NLLLoss(ignore_index=-1),
                                    cmd.get("deep_sup_scale")).to(device).train()
        opts = [torch.optim.SGD(group_weight(net), lr=cmd["lr"], momentum=cmd["momentum"],
                                weight_decay=cmd["weight_decay"]) for net in (enc, dec)]
        batches = [{k: v.to(device) for k, v in b.items()}
                   for b in torch.load(cmd["batches"], weights_only=True)]
        state[cmd["key"]] = (module, opts, batches)
        return {"ok": True}
    if op == "train_step":
        module, opts, batches = state[cmd["key"]]
        batch = batches[cmd["index"] % len(batches)]
        with MemoryProbe(device) as mem:
            loss, seconds = original_train_step(module, opts, batch, device,
                                                seed=cmd.get("seed"))
        return {"loss": loss, "time": seconds, "peak_mb": mem.peak_mb, "delta_mb": mem.delta_mb}
    raise ValueError(f"unknown command {op!r}")


class OriginalWorker:
    """The original implementation in a worker process (JSON lines over pipes)."""

    def __init__(self, python: str, threads: int, device: torch.device, repo_root: str) -> None:
        self.device = device
        self.log = tempfile.NamedTemporaryFile("w+", prefix="orig_worker_", suffix=".log",
                                               delete=False)
        self.proc = subprocess.Popen([python, "-P", os.path.abspath(__file__), "--worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, cwd=tempfile.gettempdir())
        self.info = self.call(cmd="hello", threads=threads)
        where = os.path.realpath(self.info["mit_semseg_file"])
        if where.startswith(os.path.realpath(repo_root) + os.sep):
            self.close()
            raise RuntimeError(f"{python} imports this repository's mit_semseg ({where}), not the "
                               f"original; unset PYTHONPATH or use the original's interpreter")

    def call(self, **cmd: Any) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        cmd.setdefault("device", str(self.device))
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.log.flush()
            self.log.seek(0)
            raise RuntimeError("original worker died:\n" + self.log.read()[-3000:])
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"original worker: {reply['error']}\n{reply.get('trace', '')}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call(cmd="quit")
            except (RuntimeError, OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


if __name__ == "__main__":  # pragma: no cover - exercised through --compare-original
    if sys.argv[1:] != ["--worker"]:
        raise SystemExit(f"usage: PYTHON -P {__file__} --worker  "
                         "(started by python -m mit_semseg benchmark --compare-original PYTHON)")
    _worker_main()
