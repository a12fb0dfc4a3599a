"""Label maps (data.labelmap) from every prediction path: the writer's conventions,
palette and 16-bit files; test.py's TEST.save_labels equal to the labels behind
its colour picture; Segmenter.label_map; the web API's palette download."""
from __future__ import annotations

import base64
import io
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from _support import CFG, make_tiny_checkpoint, tiny_opts
from mit_semseg.config import load_cfg
from mit_semseg.data.classes import generated_palette
from mit_semseg.data.io import LabelFormat, read_annotation
from mit_semseg.data.labelmap import (class_shares, decode_label_map, encode_label_map,
                                      label_convention, label_map_image, read_label_map,
                                      write_label_map)
from mit_semseg.prediction import run_test

pytestmark = pytest.mark.usefixtures("one_thread")

COLORS = np.array([[200, 0, 0], [0, 200, 0], [0, 0, 200]], np.uint8)
LABELS = np.array([[0, 1, 2, -1], [2, 2, 1, 0]])


def test_ade20k_convention_palette_png(tmp_path):
    path = str(tmp_path / "m.png")
    write_label_map(path, LABELS, 3, COLORS, unlabeled_color=(9, 9, 9))
    img = Image.open(path)
    assert img.mode == "P"
    assert np.asarray(img).tolist() == [[1, 2, 3, 0], [3, 3, 2, 1]]
    palette = np.asarray(img.getpalette()[:12]).reshape(4, 3)
    assert palette.tolist() == [[9, 9, 9], *COLORS.tolist()]
    # image viewers see the class colours ...
    rgb = np.asarray(img.convert("RGB"))
    assert rgb[0, 0].tolist() == [200, 0, 0] and rgb[0, 3].tolist() == [9, 9, 9]
    # ... the toolkit reads the ids back, as indices or as a colour-coded mask
    assert read_label_map(path, 3).tolist() == LABELS.tolist()
    as_rgb = read_annotation(path, 3, LabelFormat("rgb", 3, colors=COLORS,
                                                  unlabeled_colors=np.array([[9, 9, 9]])))
    assert (as_rgb.astype(int) - 1).tolist() == LABELS.tolist()


def test_zero_based_convention_and_plain_grayscale(tmp_path):
    values = encode_label_map(LABELS, 3, "zero_based", ignore_label=255)
    assert values.dtype == np.uint8 and values.tolist() == [[0, 1, 2, 255], [2, 2, 1, 0]]
    assert decode_label_map(values, "zero_based").tolist() == LABELS.tolist()
    img = label_map_image(LABELS, 3, COLORS, convention="zero_based")
    assert img.getpalette()[255 * 3:256 * 3] == [0, 0, 0]
    assert label_map_image(LABELS, 3).mode == "L"  # no colours: grayscale
    path = str(tmp_path / "z.png")
    img.save(path)
    assert read_label_map(path, 3, convention="zero_based").tolist() == LABELS.tolist()
    with pytest.raises(ValueError, match="not a class"):
        encode_label_map(LABELS, 2)
    with pytest.raises(ValueError, match="ignore_label 1 is a class"):
        encode_label_map(LABELS, 3, "zero_based", ignore_label=1)
    assert label_convention(load_cfg(None, ["DATASET.label_format", "zero_based"])) == "zero_based"
    assert label_convention(load_cfg(None, [])) == "ade20k"


def test_sixteen_bit_above_255_classes(tmp_path):
    labels = np.array([[0, 254, 255], [299, -1, 3]])
    path = str(tmp_path / "wide.png")
    write_label_map(path, labels, 300, generated_palette(300))
    img = Image.open(path)
    assert img.mode.startswith("I;16") and img.palette is None  # PNG: no palette at 16 bits
    assert np.asarray(img).tolist() == [[1, 255, 256], [300, 0, 4]]
    assert read_label_map(path, 300).tolist() == labels.tolist()
    assert label_map_image(labels[:1, :2], 255, generated_palette(255)).mode == "P"


def test_class_shares():
    shares = class_shares(LABELS, ["a", "b", "c"], COLORS)
    assert (shares["width"], shares["height"], shares["convention"]) == (4, 2, "ade20k")
    assert shares["unlabeled"] == {"value": 0, "pixels": 1, "share": 0.125}
    assert [c["name"] for c in shares["classes"]] == ["c", "a", "b"]  # largest first, ties by id
    assert shares["classes"][0] == {"id": 2, "name": "c", "value": 3, "pixels": 3,
                                    "share": 0.375, "color": "#0000c8"}
    zero = class_shares(LABELS, {0: "a", 1: "b", 2: "c"}, convention="zero_based")
    assert zero["unlabeled"]["value"] == 255 and zero["classes"][0]["value"] == 2
    assert "color" not in zero["classes"][0]


def _decode_colours(rgb: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """The class of each pixel of a colour picture (every colour must be a class's)."""
    lut = {tuple(c): k for k, c in enumerate(colors.tolist())}
    return np.array([lut[tuple(p)] for p in rgb.reshape(-1, 3).tolist()]).reshape(rgb.shape[:2])


def _photo(seed: int, h: int, w: int) -> np.ndarray:
    """A photo-like picture: smooth gradients, two blobs and noise (so a random
    network predicts several classes)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
    img[h // 4:h // 2, w // 3:2 * w // 3] = (240, 220, 40)
    img[(yy - 3 * h // 4) ** 2 + (xx - w // 4) ** 2 < (h // 6) ** 2] = (20, 40, 160)
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("num_class", [8, 300])
def test_test_py_label_maps_equal_its_colour_output(tmp_path, num_class):
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", num_class=num_class)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, (h, w) in enumerate([(48, 64), (40, 36)]):
        Image.fromarray(_photo(i, h, w)).save(photos / f"p{i}.jpg", quality=95)
    out = tmp_path / "out"
    cfg = load_cfg(CFG, tiny_opts(ckpt) + ["DATASET.num_class", str(num_class),
                                           "TEST.result", str(out), "TEST.save_labels", "True"])
    run_test(cfg, str(photos), "cpu", progress=False, stream=io.StringIO(), err=io.StringIO())
    colors = generated_palette(num_class)
    seen = set()
    for i, w in enumerate([64, 36]):
        vis = np.asarray(Image.open(out / f"p{i}.png").convert("RGB"))
        behind = _decode_colours(vis[:, w:], colors)
        img = Image.open(out / f"p{i}_labels.png")
        assert img.mode == ("P" if num_class <= 255 else "I;16")
        labels = read_label_map(str(out / f"p{i}_labels.png"), num_class)
        assert np.array_equal(labels, behind)
        if num_class <= 255:  # the palette shows the same colours as test.py's picture
            assert np.array_equal(np.asarray(img.convert("RGB")), vis[:, w:])
        shares = json.loads((out / f"p{i}_labels.json").read_text())
        ids, counts = np.unique(behind, return_counts=True)
        assert {c["id"]: c["pixels"] for c in shares["classes"]} == dict(zip(ids.tolist(),
                                                                             counts.tolist()))
        assert shares["classes"][0]["name"] == f"class_{shares['classes'][0]['id']}"
        seen |= set(ids.tolist())
    assert len(seen) >= 2
    if num_class > 255:
        assert max(seen) > 255, seen  # values above 8 bits really occur


def test_segmenter_label_map(tmp_path):
    from mit_semseg.inference.segmenter import Segmenter
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    seg = Segmenter.from_config(CFG, checkpoint_dir=ckpt, device="cpu", opts=tiny_opts(ckpt))
    labels = seg(_photo(3, 40, 52))
    img = seg.label_map(labels)
    assert img.mode == "P" and np.array_equal(np.asarray(img), labels + 1)
    assert np.array_equal(np.asarray(img.convert("RGB")), seg.colorize(labels))
    path = tmp_path / "maps" / "photo_labels.png"
    seg.label_map(labels, path, convention="zero_based")
    assert np.array_equal(np.asarray(Image.open(path)), labels)
    shares = json.loads((tmp_path / "maps" / "photo_labels.json").read_text())
    assert shares["convention"] == "zero_based"
    assert sum(c["pixels"] for c in shares["classes"]) == labels.size


def test_web_label_png_uses_the_writer_and_serves_a_palette(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pytest.importorskip("httpx")
        from fastapi.testclient import TestClient
    from mit_semseg.web.app import create_app
    from mit_semseg.web.images import read_label_png
    from mit_semseg.web.models import WebModel
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    model = WebModel.from_config(CFG, checkpoint_dir=ckpt, opts=tiny_opts(ckpt), device="cpu")
    buf = io.BytesIO()
    Image.fromarray(_photo(4, 40, 48)).save(buf, format="PNG")
    with TestClient(create_app([model])) as client:
        answer = client.post("/api/segment", files={"file": ("p.png", buf.getvalue(),
                                                             "image/png")}).json()
        raw = base64.b64decode(answer["labels_png"])
        labels = read_label_png(raw)
        # the page's contract: grayscale, value = id + 1 (the page reads the red channel)
        assert Image.open(io.BytesIO(raw)).mode == "L"
        res = client.get(f"/{answer['labels_url']}", params={"encoding": "palette"})
        assert res.status_code == 200
        img = Image.open(io.BytesIO(res.content))
        assert img.mode == "P" and np.array_equal(np.asarray(img), labels + 1)
        assert np.array_equal(np.asarray(img.convert("RGB")), model.segmenter.colorize(labels))
