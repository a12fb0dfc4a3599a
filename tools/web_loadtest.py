"""Load test of the web demo on 127.0.0.1 (standard library client; a developer
tool of the repository, not installed with the package).

    # against a running server
    python tools/web_loadtest.py --url http://127.0.0.1:8000/
    # start one (rule weights: no checkpoint needed), test every model, stop it
    python tools/web_loadtest.py --rule-weights \\
        --cfg config/ade20k-mobilenetv2dilated-c1_deepsup.yaml \\
        --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml --big 4000x3000

Per model: ``--concurrency`` simultaneous uploads (each must be answered 200
or 503 "busy, retry"), then the single-scale latency of a ``--size`` photo
(median of ``--runs``), then optionally one ``--big`` photo; at the end the
server must still answer /api/health. Memory (the server's resident set, from
/api/health): at the start, after each model's burst of uploads, at the end,
and after ``--idle`` seconds without requests (what the server keeps), plus
the peak. Exit status 1 if any check fails.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

__all__ = ["run_load", "main"]

TIMEOUT_S = 600


# ---------------------------------------------------------------------------- client

def _photo(width: int, height: int) -> bytes:
    """A synthetic scene as JPEG, ``width`` x ``height`` (upscaled from <= 640 px)."""
    from PIL import Image

    from mit_semseg.data.synthetic import make_scene
    small = (min(width, 640), max(1, round(min(width, 640) * height / width)))
    scene, _ = make_scene(np.random.default_rng(0), small[1], small[0])
    img = Image.fromarray(scene)
    if small != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _post(base: str, data: bytes, **params: str) -> tuple[int, dict, float]:
    """(status, JSON answer, round-trip seconds) of one multipart upload."""
    boundary = "----semseg-loadtest"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"photo.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    query = "&".join(f"{k}={v}" for k, v in params.items())
    req = urllib.request.Request(f"{base}api/segment?{query}", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as res:
            status, payload = res.status, json.load(res)
    except urllib.error.HTTPError as exc:
        status = exc.code
        try:
            payload = json.load(exc)
        except ValueError:
            payload = {"detail": "(not JSON)"}
    return status, payload, time.perf_counter() - t0


def _get(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=60) as res:
        return json.load(res)


def _burst(base: str, model: str, data: bytes, n: int) -> dict[str, Any]:
    start = threading.Barrier(n)

    def one(_: int) -> tuple[int, str]:
        start.wait()
        try:
            status, payload, _ = _post(base, data, model=model, scales="single")
            return status, str(payload.get("detail", ""))
        except OSError as exc:  # connection refused/reset: the server failed
            return -1, repr(exc)
    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(one, range(n)))
    counts: dict[str, int] = {}
    for status, _ in answers:
        counts[str(status)] = counts.get(str(status), 0) + 1
    bad = [a for a in answers if a[0] not in (200, 503) or (a[0] == 503 and a[1] != "busy, retry")]
    return {"requests": n, "status_counts": counts, "ok": not bad, "unexpected": bad[:5]}


def run_load(base: str, *, concurrency: int = 20, size: tuple[int, int] = (640, 480),
             runs: int = 5, big: tuple[int, int] | None = None,
             models: Sequence[str] | None = None, idle: float = 30.0,
             log=print) -> dict[str, Any]:
    """Run the checks against the server at ``base`` (ending in '/'); returns the report.
    ``idle``: seconds to wait without requests at the end before reading the server's
    memory once more (0: no wait)."""
    listing = _get(base, "api/models")
    names = list(models) if models else [m["name"] for m in listing["models"]]
    report: dict[str, Any] = {"url": base, "start": _get(base, "api/health"), "models": {}}
    log(f"server RSS at the start: {report['start']['rss_mb']} MiB")
    photo = _photo(*size)
    for name in names:
        log(f"== {name}")
        entry: dict[str, Any] = {}
        status, out, _ = _post(base, photo, model=name, scales="single")  # warm-up
        if status != 200:
            raise SystemExit(f"{name}: warm-up upload answered {status}: {out.get('detail')}")
        entry["burst"] = _burst(base, name, photo, concurrency)
        entry["burst"]["rss_mb_after"] = _get(base, "api/health")["rss_mb"]
        unexpected = "" if entry["burst"]["ok"] else f"  UNEXPECTED: {entry['burst']['unexpected']}"
        log(f"   {concurrency} concurrent uploads: {entry['burst']['status_counts']}{unexpected}"
            f"; server RSS after the burst {entry['burst']['rss_mb_after']} MiB")
        rows = []
        for _ in range(runs):
            status, out, rtt = _post(base, photo, model=name, scales="single")
            if status != 200:
                raise SystemExit(f"{name}: latency upload answered {status}: {out.get('detail')}")
            rows.append((rtt * 1000, out["time_ms"], out["inference_ms"]))
        rtt, server, infer = (statistics.median(c) for c in zip(*rows))
        entry["latency"] = {"size": f"{size[0]}x{size[1]}", "scales": out["scales"], "runs": runs,
                            "round_trip_ms": round(rtt, 1), "server_ms": round(server, 1),
                            "inference_ms": round(infer, 1)}
        log(f"   {size[0]}x{size[1]} single scale ({out['scales'][0]}): median round trip "
            f"{rtt:.0f} ms, server {server:.0f} ms, inference {infer:.0f} ms ({runs} runs)")
        if big:
            before = _get(base, "api/health")["peak_rss_mb"]
            status, out, rtt = _post(base, _photo(*big), model=name, scales="single")
            health = _get(base, "api/health")
            after = health["peak_rss_mb"]
            entry["big"] = {"size": f"{big[0]}x{big[1]}", "status": status,
                            "round_trip_ms": round(rtt * 1000, 1),
                            "peak_rss_mb_before": before, "peak_rss_mb_after": after,
                            "rss_mb_after": health["rss_mb"], "detail": out.get("detail")}
            log(f"   {big[0]}x{big[1]} ({big[0] * big[1] / 1e6:.1f} MP): status {status}, "
                f"{rtt:.1f} s, server peak RSS {before} -> {after} MiB, RSS after it "
                f"{health['rss_mb']} MiB")
        report["models"][name] = entry
    report["end"] = _get(base, "api/health")
    log(f"server still answering: {report['end']['status']}; peak RSS "
        f"{report['end']['peak_rss_mb']} MiB; RSS after the burst (all requests answered) "
        f"{report['end']['rss_mb']} MiB")
    if idle > 0:
        time.sleep(idle)
        report["idle"] = {"seconds": idle, **_get(base, "api/health")}
        log(f"RSS after {idle:g} s idle: {report['idle']['rss_mb']} MiB")
    report["ok"] = all(e["burst"]["ok"] and e.get("big", {}).get("status", 200) == 200
                       for e in report["models"].values())
    return report


# ---------------------------------------------------------------------------- server

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(cfgs: Sequence[str], rule_dir: str | None, extra: Sequence[str],
                  opts: Sequence[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "mit_semseg", "web", "--port", str(_free_port())]
    for i, cfg_path in enumerate(cfgs):
        cmd += ["--cfg", cfg_path]
        if rule_dir is not None:
            from mit_semseg.benchmark import write_rule_checkpoint
            from mit_semseg.config import load_cfg
            folder = os.path.join(rule_dir, f"model{i}")
            write_rule_checkpoint(load_cfg(cfg_path, opts), folder)
            cmd += ["--checkpoint-dir", folder]
    cmd += [*extra, *opts]
    proc = subprocess.Popen(cmd)
    base = f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}/"
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with status {proc.returncode}: {' '.join(cmd)}")
        try:
            _get(base, "api/health")
            return proc, base
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit("server did not answer within the timeout")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 640x480, got {text!r}")
    return w, h


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/web_loadtest.py",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server (e.g. http://127.0.0.1:8000/)")
    p.add_argument("--cfg", action="append", default=[],
                   help="start a server with these configs instead of --url (repeatable)")
    p.add_argument("--rule-weights", action="store_true",
                   help="with --cfg: serve parity-rule weights written to a temporary folder")
    p.add_argument("--queue", type=int, default=4, help="server --queue (default 4)")
    p.add_argument("--device", default="auto", help="server --device (default auto)")
    p.add_argument("--model", action="append", help="test only these models")
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--size", type=_size, default=(640, 480), help="latency photo (default 640x480)")
    p.add_argument("--runs", type=int, default=5, help="latency uploads per model (median)")
    p.add_argument("--big", type=_size, help="also upload one photo of this size, e.g. 4000x3000")
    p.add_argument("--idle", type=float, default=30.0,
                   help="seconds without requests at the end before the last memory reading "
                        "(default 30; 0: none)")
    p.add_argument("--json", help="write the report here")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for --cfg")
    args = p.parse_args(argv)
    if bool(args.url) == bool(args.cfg):
        p.error("give --url or --cfg (not both)")
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if args.cfg:
                proc, base = _start_server(args.cfg, tmp if args.rule_weights else None,
                                           ["--queue", str(args.queue), "--device", args.device],
                                           args.opts)
            else:
                base = args.url if args.url.endswith("/") else args.url + "/"
            report = run_load(base, concurrency=args.concurrency, size=args.size,
                              runs=args.runs, big=args.big, models=args.model,
                              idle=args.idle)
            if proc is not None:
                report["server_alive"] = proc.poll() is None
                report["ok"] = report["ok"] and report["server_alive"]
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(60)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    print("PASS" if report["ok"] else "FAIL")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
