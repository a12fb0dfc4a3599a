"""The demo's ASGI app: the page (``static/``) and its JSON API.

``create_app(models)`` builds it from loaded ``WebModel``s, so tests drive it
with FastAPI's TestClient and no network. Endpoints (see docs/web.md and /docs):

* ``GET /``: the page. ``GET /api/health``, ``GET /api/models``.
* ``POST /api/segment?model=&scales=&flip=&confidence=&job=``: a multipart upload
  (field ``file``) or the raw image bytes -> size, classes present, times and
  the label map as a base64 PNG, plus URLs of the label PNG and of the
  image|labels PNG that test.py writes; with ``confidence=true`` also the
  confidence map (8-bit grayscale PNG, 255 = probability 1), its URL, the
  mean confidence and each class's.
* ``GET /api/progress/{job}``: how far the request sent with ``job=`` is
  (receiving, queued, running: steps done of total; tiles in slide mode).
* ``GET /api/results/{id}/labels.png``, ``.../result.png`` and
  ``.../confidence.png``: the last ``keep`` results.

Errors are JSON ``{"detail": message}`` with a 4xx/5xx status.
"""
from __future__ import annotations

import base64
import collections
import logging
import os
import sys
import threading
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Literal, Sequence

import numpy as np

from . import require_web

require_web()

from fastapi import FastAPI, HTTPException, Query, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import FileResponse, JSONResponse, Response  # noqa: E402
from fastapi.staticfiles import StaticFiles  # noqa: E402
from starlette.formparsers import MultiPartException, MultiPartParser  # noqa: E402

from ..inference.fusion import release_workspace  # noqa: E402
from ..runtime.process import release_memory  # noqa: E402
from .images import (UploadError, confidence_png, decode_upload, label_png,  # noqa: E402
                     label_png_rgb, read_label_png, result_png)
from .models import Busy, Runner, WebModel, hex_color, parse_scales  # noqa: E402

__all__ = ["create_app", "STATIC_DIR"]

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
# room for the multipart boundaries, part headers and small fields around the file
_FORM_SLACK = 64 * 1024
_log = logging.getLogger("mit_semseg.web")

_SEGMENT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary",
                                    "description": "the photo (JPEG, PNG, WebP, ...)"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}


def create_app(models: Sequence[WebModel], *, max_upload_mb: float = 20, queue: int = 4,
               keep: int = 8, max_pixels: int | None = None) -> FastAPI:
    """The demo app serving ``models`` (the first is the default).

    ``max_upload_mb``: larger uploads get 413 while they are read. ``queue``:
    requests that may wait per model while one runs (more get 503). ``keep``:
    results whose PNGs stay downloadable. ``max_pixels``: larger images get 413
    (default PIL's decompression-bomb limit).
    """
    if not models:
        raise ValueError("create_app needs at least one model")
    by_name = {m.name: m for m in models}
    if len(by_name) != len(models):
        raise ValueError(f"model names must differ, got {[m.name for m in models]}")
    limit = int(max_upload_mb * 2 ** 20)
    runners = {m.name: Runner(m.name, queue, _give_back_memory) for m in models}
    downloads = Runner("downloads", queue, _give_back_memory)
    store = _ResultStore(keep)
    jobs = _Jobs()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for runner in (*runners.values(), downloads):
            runner.close()

    app = FastAPI(title="mit_semseg web demo", lifespan=lifespan,
                  description="Scene parsing of uploaded photos with mit_semseg models. "
                              "Errors are JSON objects {\"detail\": message}.")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_error_handlers(app)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(os.path.join(STATIC_DIR, "index.html"))

    @app.get("/api/health", summary="Server status")
    async def health() -> dict[str, Any]:
        """``status`` ok, requests running or queued per model, the queue capacity,
        and the server process's current and peak resident memory (MiB)."""
        return {"status": "ok",
                "models": {n: {"pending": r.pending, "capacity": r.capacity}
                           for n, r in runners.items()},
                **_memory_mb()}

    @app.get("/api/models", summary="Models and their classes")
    async def list_models() -> dict[str, Any]:
        """Every model: name, number of classes, configured test scales (``multi``),
        the ``single`` scale, and its classes (id, name, colour)."""
        return {"default": models[0].name, "max_upload_mb": max_upload_mb,
                "models": [_describe_model(m) for m in models]}

    @app.post("/api/segment", summary="Segment an uploaded photo",
              openapi_extra={"requestBody": _SEGMENT_BODY},
              responses={400: {"description": "empty, truncated or corrupt upload; bad field"},
                         404: {"description": "unknown model"},
                         413: {"description": "upload or image too large"},
                         415: {"description": "not an image"},
                         503: {"description": "busy, retry"}})
    async def segment(
            request: Request,
            model: str | None = Query(None, description="model name (GET /api/models); "
                                                         "default: the first"),
            scales: str = Query("single", description="'single' (the middle configured "
                                "size), 'multi' (all of DATASET.imgSizes) or short sides "
                                "like '300,450'"),
            flip: bool = Query(False, description="also average the left-right mirrored image"),
            confidence: bool = Query(False, description="also return the confidence map: "
                                     "each pixel's probability of its class"),
            job: str | None = Query(None, pattern=_JOB_ID, description="a name of the "
                                    "client's choosing (8-64 letters, digits, - or _) under "
                                    "which GET /api/progress/{job} reports this request"),
    ) -> dict[str, Any]:
        """Segment the photo sent as multipart field ``file`` (or as the raw body).
        Returns width, height, classes present (id, name, colour, pixels, share in
        0..1 and percent, largest first), the label map as base64 PNG
        (``labels_png``: value k+1 for class id k), URLs of that PNG and of the
        image|labels PNG as test.py writes it, and the time taken (ms). With
        ``confidence``: ``confidence_png`` (base64 8-bit grayscale PNG, value
        round(255 p) for the probability p of the pixel's class), its URL
        ``confidence_url``, ``mean_confidence`` and per class ``confidence``
        (mean over its pixels). ``mode``: "whole" (``scales`` used) or "slide" (the
        model's sliding window; ``scales`` empty); ``steps``: network runs and the
        fusion, or tiles in slide mode (``step_unit``), as GET /api/progress counts."""
        t0 = time.perf_counter()
        chosen = _model(by_name, model)
        try:
            sizes = parse_scales(scales, chosen)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        runner = runners[chosen.name]
        if runner.pending >= runner.capacity:  # refuse before reading the upload
            raise _busy()
        progress = jobs.open(job, chosen)
        try:
            data, name = await _read_upload(request, limit)
            progress.state = "queued"
            out = await runner.run(_segment_job, chosen, data, name, sizes, flip, max_pixels,
                                   confidence, progress)
        except Busy:
            raise _busy() from None
        except UploadError as exc:
            raise HTTPException(exc.status, exc.message) from None
        finally:
            jobs.close(job)
        labels_bytes = out.pop("labels_png")
        conf_bytes = out.pop("confidence_png", None)
        rid = store.put(chosen.name, data, name, labels_bytes, conf_bytes)
        out.update(id=rid, labels_png=base64.b64encode(labels_bytes).decode("ascii"),
                   labels_url=f"api/results/{rid}/labels.png",
                   result_url=f"api/results/{rid}/result.png")
        if conf_bytes is not None:
            out.update(confidence_png=base64.b64encode(conf_bytes).decode("ascii"),
                       confidence_url=f"api/results/{rid}/confidence.png")
        out["time_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        return out

    @app.get("/api/progress/{job}", summary="How far a segment request is",
             responses={404: {"description": "no such request running (unknown or done)"}})
    async def job_progress(job: str) -> dict[str, Any]:
        """The request sent with ``job=``: ``state`` receiving (the upload), queued
        (waiting for the model) or running; ``done`` of ``total`` steps (``unit``:
        "step", a network run or the fusion; "tile" in slide mode; total 0 until the
        network starts); ``elapsed_s`` since it arrived. 404 once answered."""
        return jobs.get(job).describe()

    @app.get("/api/results/{rid}/labels.png", summary="Raw label map of a result",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def result_labels(
            rid: str,
            encoding: Literal["raw", "rgb", "palette"] = Query(
                "raw", description="'raw': 8-bit (16-bit above 255 classes) grayscale; 'rgb': "
                                   "red = (k+1) mod 256, green = (k+1) div 256, for pages; "
                                   "'palette': 8-bit indexed with the class colours as its "
                                   "palette, for image viewers (16-bit grayscale above 255 "
                                   "classes)")
    ) -> Response:
        """The label map as PNG, value k+1 for class id k."""
        entry = store.get(rid)
        png = entry.labels_png
        if encoding != "raw":
            if encoding == "rgb":
                def job() -> bytes:
                    return label_png_rgb(read_label_png(entry.labels_png))
            else:
                chosen = by_name[entry.model]

                def job() -> bytes:
                    return label_png(read_label_png(entry.labels_png), chosen.num_class,
                                     chosen.segmenter.colors)
            try:
                png = await downloads.run(job)
            except Busy:
                raise _busy() from None
        return Response(png, media_type="image/png", headers=_attachment(entry.name, "labels"))

    @app.get("/api/results/{rid}/confidence.png", summary="Confidence map of a result",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def result_confidence(rid: str) -> Response:
        """The confidence map as 8-bit grayscale PNG: value round(255 p) for the
        probability p of each pixel's class (results segmented with confidence=true)."""
        entry = store.get(rid)
        if entry.confidence_png is None:
            raise HTTPException(404, f"result {rid!r} has no confidence map; segment the photo "
                                     f"with confidence=true")
        return Response(entry.confidence_png, media_type="image/png",
                        headers=_attachment(entry.name, "confidence"))

    @app.get("/api/results/{rid}/result.png", summary="Image | labels PNG of a result",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def result_pair(rid: str) -> Response:
        """The photo and its colourised labels side by side, as test.py writes them."""
        entry = store.get(rid)
        chosen = by_name[entry.model]
        try:
            png = await downloads.run(_pair_job, chosen, entry, max_pixels)
        except Busy:
            raise _busy() from None
        return Response(png, media_type="image/png", headers=_attachment(entry.name, "result"))

    return app


# ---------------------------------------------------------------------------- jobs

def _segment_job(model: WebModel, data: bytes, name: str, sizes: tuple[int, ...], flip: bool,
                 max_pixels: int | None, confidence: bool = False,
                 progress: "_Progress | None" = None) -> dict[str, Any]:
    progress = progress or _Progress(model)
    progress.state = "running"
    photo = decode_upload(data, name, max_pixels)
    t0 = time.perf_counter()
    slide = model.segmenter.engine.mode == "slide"
    if slide:
        sizes = ()  # the model's sliding window decides
    out = model.segmenter.predict(photo, imgSizes=None if slide else list(sizes), flip=flip,
                                  return_confidence=confidence, progress=progress)
    labels, conf = out if confidence else (out, None)
    inference_ms = (time.perf_counter() - t0) * 1000
    height, width = labels.shape
    colors = model.segmenter.colors
    counts = np.bincount(labels.ravel(), minlength=model.num_class)
    classes = [{"id": s.index, "name": s.name, "color": hex_color(colors[s.index]),
                "pixels": int(counts[s.index]), "share": int(counts[s.index]) / labels.size,
                "percent": round(s.percent, 2)}
               for s in model.segmenter.describe(labels)]
    result = {"model": model.name, "width": width, "height": height, "scales": list(sizes),
              "flip": flip, "mode": "slide" if slide else "whole", "steps": progress.total,
              "step_unit": progress.unit, "classes": classes,
              "inference_ms": round(inference_ms, 1),
              "labels_png": label_png(labels, model.num_class)}
    if conf is not None:
        sums = np.bincount(labels.ravel(), weights=conf.ravel().astype(np.float64),
                           minlength=model.num_class)
        for c in classes:
            c["confidence"] = round(float(sums[c["id"]] / max(c["pixels"], 1)), 4)
        result.update(mean_confidence=round(float(conf.mean(dtype=np.float64)), 4),
                      confidence_png=confidence_png(conf))
    return result


def _pair_job(model: WebModel, entry: "_Result", max_pixels: int | None) -> bytes:
    photo = decode_upload(entry.upload, entry.name, max_pixels)
    return result_png(photo, read_label_png(entry.labels_png), model.segmenter.colors)


# ---------------------------------------------------------------------------- helpers

def _give_back_memory() -> None:
    """Run by a runner's thread when it goes idle: its fusion buffers (kept per
    thread for the next photo) are dropped and the heap's free pages go back to
    the system, so a burst of large photos does not stay resident."""
    release_workspace()
    release_memory()


_JOB_ID = r"^[A-Za-z0-9_-]{8,64}$"


class _Progress:
    """One request's progress: ``progress(done, total)`` as the engine calls it."""

    def __init__(self, model: WebModel) -> None:
        self.state = "receiving"
        self.done = self.total = 0
        self.unit = "tile" if model.segmenter.engine.mode == "slide" else "step"
        self.start = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = int(done), int(total)

    def describe(self) -> dict[str, Any]:
        return {"state": self.state, "done": self.done, "total": self.total, "unit": self.unit,
                "elapsed_s": round(time.monotonic() - self.start, 1)}


class _Jobs:
    """Progress of the requests that named a ``job``, while they are served."""

    def __init__(self) -> None:
        self._items: dict[str, _Progress] = {}
        self._lock = threading.Lock()

    def open(self, job: str | None, model: WebModel) -> _Progress:
        progress = _Progress(model)
        if job is not None:
            with self._lock:
                if job in self._items:
                    raise HTTPException(409, f"job {job!r} is already running; name each "
                                             f"request differently")
                self._items[job] = progress
        return progress

    def close(self, job: str | None) -> None:
        if job is not None:
            with self._lock:
                self._items.pop(job, None)

    def get(self, job: str) -> _Progress:
        return _locked_get(self._lock, self._items, job, f"no request {job!r} is running "
                                                          f"(unknown, or answered already)")


class _Result(collections.namedtuple("_Result", "model upload name labels_png confidence_png")):
    """A kept result: model name, uploaded bytes, upload name, label PNG bytes,
    confidence PNG bytes (None when not asked for)."""


class _ResultStore:
    """The last ``keep`` results, by id (thread-safe)."""

    def __init__(self, keep: int) -> None:
        self.keep = max(1, int(keep))
        self._items: collections.OrderedDict[str, _Result] = collections.OrderedDict()
        self._lock = threading.Lock()

    def put(self, model: str, upload: bytes, name: str, labels: bytes,
            confidence: bytes | None = None) -> str:
        rid = uuid.uuid4().hex
        with self._lock:
            self._items[rid] = _Result(model, upload, name, labels, confidence)
            while len(self._items) > self.keep:
                self._items.popitem(last=False)
        return rid

    def get(self, rid: str) -> _Result:
        return _locked_get(self._lock, self._items, rid, f"result {rid!r} not found (only "
                                                         f"the last {self.keep} results are "
                                                         f"kept); segment the photo again")


def _locked_get(lock: threading.Lock, items: dict, key: str, missing: str) -> Any:
    """``items[key]`` read under ``lock``; a 404 saying ``missing`` when absent."""
    with lock:
        value = items.get(key)
    if value is None:
        raise HTTPException(404, missing)
    return value


def _model(by_name: dict[str, WebModel], name: str | None) -> WebModel:
    if name is None or name == "":
        return next(iter(by_name.values()))
    if name not in by_name:
        raise HTTPException(404, f"unknown model {name!r}; available: {', '.join(by_name)}")
    return by_name[name]


def _describe_model(m: WebModel) -> dict[str, Any]:
    return {"name": m.name, "num_class": m.num_class, "img_sizes": list(m.img_sizes),
            "single_size": m.single_size, "max_size": m.max_size, "classes": m.classes()}


def _busy() -> HTTPException:
    return HTTPException(503, "busy, retry", headers={"Retry-After": "1"})


def _attachment(upload_name: str, kind: str) -> dict[str, str]:
    stem = os.path.splitext(os.path.basename(upload_name or "upload"))[0] or "upload"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80]
    return {"Content-Disposition": f'attachment; filename="{safe}_{kind}.png"'}


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit:
            raise _too_large(limit - _FORM_SLACK)
        yield chunk


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"upload too large: the limit is {limit / 2 ** 20:.4g} MB "
                              f"(server option --max-upload-mb)")


async def _read_upload(request: Request, limit: int) -> tuple[bytes, str]:
    """The uploaded file's bytes and name; 413 as soon as more than ``limit`` bytes
    (plus form overhead) arrive, so nothing larger is ever held."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + _FORM_SLACK:
        raise _too_large(limit)
    stream = _limited(request.stream(), limit + _FORM_SLACK)
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        parser = MultiPartParser(request.headers, stream, max_files=1, max_fields=16)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise HTTPException(400, f"bad multipart upload: {exc.message}") from None
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPException(400, "no file in the upload: send the photo in the "
                                         "multipart field 'file'")
            data = await upload.read(limit + 1)
            name = upload.filename or "upload"
        finally:
            await form.close()
    elif not ctype or ctype.startswith(("image/", "application/octet-stream")):
        data = b"".join([chunk async for chunk in stream])
        name = "upload"
    else:
        raise HTTPException(415, f"unsupported Content-Type {ctype!r}: send multipart/form-data "
                                 "with the photo in field 'file', or the image bytes as the body")
    if len(data) > limit:
        raise _too_large(limit)
    return data, name


def _memory_mb() -> dict[str, float | None]:
    rss = peak = None
    try:
        with open("/proc/self/statm") as fh:
            rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10  # bytes vs KiB
    except ImportError:
        pass
    return {"rss_mb": None if rss is None else round(rss, 1),
            "peak_rss_mb": None if peak is None else round(peak, 1)}


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", ""))
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=400)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        _log.exception("error while serving %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"},
                            status_code=500)
