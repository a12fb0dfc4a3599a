"""Web demo API (FastAPI TestClient, no network): the happy path gives test.py's
labels and PNG; every bad upload gets a clear 4xx JSON answer and the server
keeps serving; a full queue answers 503; the CLI's errors."""
import asyncio
import base64
import io
import threading
import warnings

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # newer Starlette prefers httpx2 and says so
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

from _web_support import (CFG, NAME, OPTS, WIDE_OPTS, encode, photo,  # noqa: E402
                          write_rule_checkpoint)

from mit_semseg.config import load_cfg  # noqa: E402
from mit_semseg.web import WebExtraMissing, require_web  # noqa: E402
from mit_semseg.web.app import create_app  # noqa: E402
from mit_semseg.web.images import read_label_png  # noqa: E402
from mit_semseg.web.models import WebModel  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    write_rule_checkpoint(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def model(ckpt):
    return WebModel.from_config(CFG, checkpoint_dir=ckpt, opts=OPTS, device="cpu")


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app([model], max_upload_mb=0.05, queue=2)) as c:
        yield c


def post(client, data, name="photo.png", ctype="image/png", **params):
    return client.post("/api/segment", params=params, files={"file": (name, data, ctype)})


def labels_of(answer):
    return read_label_png(base64.b64decode(answer["labels_png"]))


def assert_error(res, status, *words):
    assert res.status_code == status, res.text
    assert res.headers["content-type"].startswith("application/json")
    detail = res.json()["detail"]
    assert isinstance(detail, str)
    for word in words:
        assert word in detail, detail


# ---------------------------------------------------------------- happy path

def test_page_models_health_and_docs(client):
    page = client.get("/")
    assert page.status_code == 200 and 'src="static/app.js"' in page.text
    for asset in ("app.js", "style.css"):
        assert client.get(f"/static/{asset}").status_code == 200
    models = client.get("/api/models").json()
    assert models["default"] == NAME
    (m,) = models["models"]
    assert m["num_class"] == 150 and m["img_sizes"] == [40, 56] and m["single_size"] == 56
    assert m["classes"][0] == {"id": 0, "name": "wall", "color": "#787878"}
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["peak_rss_mb"] > 0
    assert health["models"][NAME] == {"pending": 0, "capacity": 3}
    spec = client.get("/openapi.json").json()
    assert {"/api/segment", "/api/models", "/api/health"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/api/segment"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("scales,flip", [("single", False), ("multi", True), ("40", False)])
def test_segment_equals_segmenter(client, model, scales, flip):
    arr = photo()
    res = post(client, encode(arr), scales=scales, flip=str(flip).lower())
    assert res.status_code == 200, res.text
    out = res.json()
    sizes = {"single": [56], "multi": [40, 56], "40": [40]}[scales]
    assert (out["width"], out["height"], out["scales"], out["flip"]) == (80, 64, sizes, flip)
    labels = labels_of(out)
    expected = model.segmenter.predict(arr, imgSizes=sizes, flip=flip)
    assert np.array_equal(labels, expected)
    ids, counts = np.unique(expected, return_counts=True)
    assert len(ids) >= 2  # the photo gives more than one class, so order matters
    assert [c["id"] for c in out["classes"]] == list(ids[np.lexsort((ids, -counts))])
    for c in out["classes"]:
        assert c["pixels"] == int((expected == c["id"]).sum())
        assert c["share"] == pytest.approx(c["pixels"] / expected.size)
        assert c["name"] == model.segmenter.names[c["id"]]
        assert c["color"] == "#%02x%02x%02x" % tuple(model.segmenter.colors[c["id"]])
    assert sum(c["share"] for c in out["classes"]) == pytest.approx(1.0)
    assert out["time_ms"] >= out["inference_ms"] > 0


def test_downloads_equal_what_test_py_writes(client, ckpt, tmp_path):
    from mit_semseg.prediction import run_test
    arr = photo(58, 90)
    src = tmp_path / "in" / "scene.png"
    src.parent.mkdir()
    Image.fromarray(arr).save(src)
    out = post(client, src.read_bytes(), name="scene.png", scales="multi").json()
    cfg = load_cfg(CFG, OPTS + ["DIR", ckpt, "TEST.result", str(tmp_path / "out")])
    assert run_test(cfg, str(src), device="cpu", progress=False, stream=io.StringIO()) == 0
    written = np.asarray(Image.open(tmp_path / "out" / "scene.png"))
    pair = client.get(out["result_url"])
    assert pair.status_code == 200 and pair.headers["content-type"] == "image/png"
    assert 'filename="scene_result.png"' in pair.headers["content-disposition"]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(pair.content))), written)
    raw = client.get(out["labels_url"])
    assert raw.status_code == 200
    with Image.open(io.BytesIO(raw.content)) as img:
        assert img.mode == "L"  # value = class id + 1, the dataset convention
        assert np.array_equal(np.asarray(img).astype(np.int64) - 1, labels_of(out))
    assert_error(client.get("/api/results/nope/result.png"), 404, "not found")


def test_more_than_255_classes(tmp_path):
    write_rule_checkpoint(str(tmp_path), WIDE_OPTS)
    wide = WebModel.from_config(CFG, checkpoint_dir=str(tmp_path), opts=WIDE_OPTS, device="cpu")
    arr = photo(120, 160)
    expected = wide.segmenter.predict(arr, imgSizes=[56])
    assert expected.max() > 255
    with TestClient(create_app([wide])) as c:
        out = post(c, encode(arr)).json()
        assert np.array_equal(labels_of(out), expected)
        raw = c.get(out["labels_url"])
        with Image.open(io.BytesIO(raw.content)) as img:
            assert img.mode.startswith("I;16")
        packed = c.get(out["labels_url"], params={"encoding": "rgb"})
        rgb = np.asarray(Image.open(io.BytesIO(packed.content))).astype(np.int64)
        assert np.array_equal(rgb[..., 0] + 256 * rgb[..., 1] - 1, expected)
        assert_error(c.get(out["labels_url"], params={"encoding": "jpeg"}), 400, "encoding")


def test_raw_body_jpeg_and_exif_orientation(client, model):
    arr = photo(40, 64)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees, as test.py reads it
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=95)
    res = client.post("/api/segment", content=buf.getvalue(),
                      headers={"content-type": "image/jpeg"})
    assert res.status_code == 200, res.text
    assert (res.json()["width"], res.json()["height"]) == (40, 64)


# ---------------------------------------------------------------- bad input

@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_uploads_get_clear_4xx_and_the_server_keeps_serving(client, monkeypatch):
    good = encode(photo())
    png = encode(photo(), compress_level=0)
    assert_error(post(client, b"this is not an image", name="notes.txt", ctype="text/plain"),
                 415, "notes.txt", "not an image")
    assert_error(post(client, png[: len(png) // 2], name="cut.png"), 400, "cut.png", "truncated")
    jpeg = encode(photo(), "JPEG")
    assert_error(post(client, jpeg[: len(jpeg) // 2], name="cut.jpg"), 400, "truncated")
    assert_error(post(client, b"", name="empty.png"), 400, "empty upload")
    floats = encode(np.zeros((8, 8), np.float32), "TIFF")
    assert_error(post(client, floats, name="depth.tif", ctype="image/tiff"), 415,
                 "depth.tif", "unsupported image mode 'F'")
    big = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)
    assert_error(post(client, encode(big)), 413, "too large", "0.05 MB", "--max-upload-mb")
    assert_error(client.post("/api/segment"), 400, "empty upload")
    assert_error(client.post("/api/segment", files={"other": (None, "x")}), 400,
                 "field 'file'")
    assert_error(client.post("/api/segment", content=b"{}",
                             headers={"content-type": "application/json"}), 415, "multipart")
    # decompression bombs: above PIL's limit (its warning counts as an error) and 2x above
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)
    assert_error(post(client, encode(photo(64, 80)), name="bomb.png"), 413,
                 "bomb.png", "80x64 = 5120 pixels", "limit of 4000")
    assert_error(post(client, encode(photo(100, 100)), name="bomb2.png"), 413, "bomb")
    monkeypatch.undo()
    # bad parameters
    assert_error(post(client, good, model="nope"), 404, "unknown model 'nope'", NAME)
    assert_error(post(client, good, scales="huge"), 400, "scales must be")
    assert_error(post(client, good, scales="8"), 400, "between 16 and 4096")
    assert_error(post(client, good, flip="maybe"), 400, "flip")
    # still serving
    assert post(client, good).status_code == 200
    assert client.get("/api/health").json()["models"][NAME]["pending"] == 0


def test_oversized_upload_is_refused_while_reading(client, model):
    # Driven at the ASGI level: the test client would read the whole body first.
    app = create_app([model], max_upload_mb=0.05)
    received, messages = [], []

    async def receive():
        received.append(4096)
        return {"type": "http.request", "body": b"\x00" * 4096, "more_body": len(received) < 400}

    async def send(message):
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/api/segment", "raw_path": b"/api/segment",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 8000), "headers": [(b"content-type", b"image/png")]}
    asyncio.run(app(scope, receive, send))
    assert messages[0]["status"] == 413
    # 1.6 MB offered without a length; reading stopped past 0.05 MB (+ 64 KiB form slack)
    assert sum(received) <= 0.05 * 2 ** 20 + 64 * 1024 + 4096
    assert b"too large" in b"".join(m.get("body", b"") for m in messages[1:])
    too_long = {"content-type": "image/png", "content-length": str(10 * 2 ** 20)}
    assert_error(client.post("/api/segment", content=b"x", headers=too_long), 413, "too large")


def test_full_queue_answers_503_busy_retry(model, monkeypatch):
    started, release = threading.Event(), threading.Event()
    real = model.segmenter.predict

    def blocking(*args, **kwargs):
        started.set()
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(model.segmenter, "predict", blocking)
    good = encode(photo())
    with TestClient(create_app([model], queue=0)) as c:
        first = {}
        worker = threading.Thread(target=lambda: first.update(res=post(c, good)))
        worker.start()
        try:
            assert started.wait(60)
            # the event loop keeps serving while the model's worker is busy
            assert c.get("/api/health").json()["models"][NAME]["pending"] == 1
            busy = post(c, good)
            assert busy.status_code == 503 and busy.json() == {"detail": "busy, retry"}
            assert busy.headers["retry-after"] == "1"
        finally:
            release.set()
            worker.join(60)
        assert first["res"].status_code == 200
        assert post(c, good).status_code == 200  # the slot was freed


def test_model_choice(ckpt, model):
    second = WebModel.from_config(CFG, checkpoint_dir=ckpt, opts=OPTS + ["DATASET.imgSizes", "(32,)"],
                                  device="cpu", name="small")
    with TestClient(create_app([model, second])) as c:
        names = [m["name"] for m in c.get("/api/models").json()["models"]]
        assert names == [NAME, "small"]
        out = post(c, encode(photo()), model="small").json()
        assert out["model"] == "small" and out["scales"] == [32]
    with pytest.raises(ValueError, match="names must differ"):
        create_app([model, model])


# ---------------------------------------------------------------- CLI

def test_missing_web_extra_names_the_install_command(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "uvicorn" else real(name, *a))
    with pytest.raises(WebExtraMissing, match=r"uvicorn.*pip install -e '\.\[web\]'"):
        require_web()


def test_cli_errors(tmp_path, capsys):
    from mit_semseg.commands.web import main
    assert main(["--cfg", CFG, "--cfg", CFG, "--checkpoint-dir", str(tmp_path)]) == 2
    assert "once per --cfg" in capsys.readouterr().err
    assert main(["--cfg", CFG, "--checkpoint-dir", str(tmp_path), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and str(tmp_path) in err
    assert main(["--cfg", str(tmp_path / "missing.yaml")]) == 1
    assert "config file not found" in capsys.readouterr().err


def test_cli_closes_its_socket_when_loading_fails(tmp_path, capsys):
    """The port is bound before the models load; a failed load frees it at once
    (not when the garbage collector finds the error's frames)."""
    import gc
    import socket
    from mit_semseg.commands.web import main
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gc.disable()
    try:
        assert main(["--cfg", CFG, "--checkpoint-dir", str(tmp_path), "--device", "cpu",
                     "--port", str(port)]) == 1
        assert "checkpoint not found" in capsys.readouterr().err
        with socket.socket() as again:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", port))  # EADDRINUSE while a listener is open
            again.listen(1)
    finally:
        gc.enable()


# ---------------------------------------------------------------- confidence

def test_confidence_map(client, model):
    from mit_semseg.data.io import confidence_uint8
    arr = photo()
    out = post(client, encode(arr), name="scene.png", scales="multi", confidence="true").json()
    labels, conf = model.segmenter.predict(arr, imgSizes=[40, 56], return_confidence=True)
    assert np.array_equal(labels_of(out), labels)
    png = base64.b64decode(out["confidence_png"])
    with Image.open(io.BytesIO(png)) as img:
        assert img.mode == "L" and img.size == (80, 64)
        assert np.array_equal(np.asarray(img), confidence_uint8(conf))  # 255 = probability 1
    assert out["mean_confidence"] == pytest.approx(conf.mean(), abs=1e-4)
    for c in out["classes"]:
        assert c["confidence"] == pytest.approx(conf[labels == c["id"]].mean(), abs=1e-4)
    got = client.get(out["confidence_url"])
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert got.content == png and 'filename="scene_confidence.png"' in \
        got.headers["content-disposition"]
    # without confidence=true: none computed, none kept
    plain = post(client, encode(arr)).json()
    assert "confidence_png" not in plain and "mean_confidence" not in plain
    assert all("confidence" not in c for c in plain["classes"])
    assert_error(client.get(f"api/results/{plain['id']}/confidence.png"), 404,
                 "no confidence map", "confidence=true")
    assert_error(post(client, encode(arr), confidence="sometimes"), 400, "confidence")


# ---------------------------------------------------------------- progress and memory

def test_progress_of_a_running_request(model, monkeypatch):
    """GET /api/progress/{job} reports the steps of the request sent with job=;
    the answer counts them too; 404 before and after."""
    started, release = threading.Event(), threading.Event()
    engine = model.segmenter.engine
    real = engine.scores
    calls = []

    def blocking(img):
        calls.append(1)
        if len(calls) == 2:  # hold the second network run
            started.set()
            assert release.wait(60)
        return real(img)

    monkeypatch.setattr(engine, "scores", blocking)
    job = "job-0123456789"
    with TestClient(create_app([model])) as c:
        assert c.get(f"/api/progress/{job}").status_code == 404
        first = {}
        worker = threading.Thread(target=lambda: first.update(
            res=post(c, encode(photo()), scales="multi", flip="true", job=job)))
        worker.start()
        try:
            assert started.wait(60)
            now = c.get(f"/api/progress/{job}").json()
            # 2 scales x (photo + mirrored) runs and the fusion; the first run is done
            assert {k: now[k] for k in ("state", "done", "total", "unit")} == \
                {"state": "running", "done": 1, "total": 5, "unit": "step"}
            assert_error(post(c, encode(photo()), job=job), 409, "already running")
        finally:
            release.set()
            worker.join(60)
        out = first["res"].json()
        assert (out["mode"], out["steps"], out["step_unit"]) == ("whole", 5, "step")
        assert c.get(f"/api/progress/{job}").status_code == 404
        assert_error(post(c, encode(photo()), job="bad id!"), 400, "job")


def test_slide_mode_model_reports_tiles(ckpt):
    opts = OPTS + ["TEST.mode", "slide", "TEST.crop_size", "[32, 32]", "TEST.stride", "[24, 24]"]
    slide = WebModel.from_config(CFG, checkpoint_dir=ckpt, device="cpu", name="slide", opts=opts)
    seen = []
    with TestClient(create_app([slide])) as c:
        out = post(c, encode(photo()), scales="multi").json()  # scales do not apply
    assert (out["mode"], out["scales"], out["step_unit"]) == ("slide", [], "tile")
    assert np.array_equal(labels_of(out), slide.segmenter.predict(photo()))
    slide.segmenter.predict(photo(), progress=lambda d, t: seen.append((d, t)))
    assert out["steps"] == seen[-1][1] == 3 * 3  # 64 x 80 photo: 3 x 3 tiles of 32 at 24


def test_idle_runner_gives_memory_back(model, monkeypatch):
    """After the last queued request a model's worker thread drops its fusion
    buffers and trims the heap (mit_semseg.runtime.process.release_memory)."""
    import mit_semseg.web.app as app_module
    idle = threading.Event()
    calls = []
    monkeypatch.setattr(app_module, "release_memory", lambda: (calls.append(
        threading.current_thread().name), idle.set()))
    with TestClient(create_app([model])) as c:
        assert post(c, encode(photo())).status_code == 200
        assert idle.wait(60)
    assert calls and calls[0].startswith("semseg-" + NAME)


def test_runner_idle_hook_waits_for_the_queue():
    from mit_semseg.web.models import Runner
    calls = []
    runner = Runner("t", queue=2, on_idle=lambda: calls.append(runner.pending))
    gate = threading.Event()

    async def main():
        first = asyncio.ensure_future(runner.run(gate.wait, 60))
        second = asyncio.ensure_future(runner.run(lambda: None))
        await asyncio.sleep(0.05)
        assert calls == []  # busy
        gate.set()
        await asyncio.gather(first, second)
        await asyncio.get_running_loop().run_in_executor(runner._pool, lambda: None)

    asyncio.run(main())
    runner.close()
    assert calls == [0]  # once, when the queue was empty
