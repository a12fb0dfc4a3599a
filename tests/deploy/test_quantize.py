"""int8 quantization (mit_semseg/export/quantize.py, python -m mit_semseg quantize):
the accuracy guard refuses a bad calibration and passes a good one, the file
records how it was made, the speed line on CPUs with and without int8
instructions, and int8 files in the engine (precision, metadata, eval's JSON)."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from mit_semseg.commands.quantize import main as quantize_main
from mit_semseg.config import ConfigError, cfg as default_cfg
from mit_semseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from mit_semseg.export import quantize as q

from _custom_data import PHOTO_COLORS, scene
from _support import CFG, make_tiny_checkpoint, tiny_opts

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mit_semseg.export.onnx import export_onnx, metadata, read_metadata  # noqa: E402
from mit_semseg.inference.backends import OnnxBackend  # noqa: E402


class ColorNet(nn.Module):
    """Labels by the nearest of the three ``PHOTO_COLORS`` (a linear classifier on
    the positive and negative parts of the normalised pixel, at 1/4 resolution,
    passed once through an identity convolution, so that a convolution stays
    quantized when the first and the last are kept in fp32): decided with wide
    margins, so a good int8 calibration keeps every label."""

    def __init__(self) -> None:
        super().__init__()
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        c = (torch.tensor(PHOTO_COLORS, dtype=torch.float32) / 255 - mean) / std
        self.pool = nn.AvgPool2d(4, ceil_mode=True)
        self.split = nn.Conv2d(3, 6, 1)
        self.middle = nn.Conv2d(6, 6, 1)
        self.classify = nn.Conv2d(6, 3, 1)
        with torch.no_grad():
            self.split.weight.copy_(torch.cat([torch.eye(3), -torch.eye(3)]).view(6, 3, 1, 1))
            self.split.bias.zero_()
            self.middle.weight.copy_(torch.eye(6).view(6, 6, 1, 1))
            self.middle.bias.zero_()
            self.classify.weight.copy_(torch.cat([c, -c], 1).view(3, 6, 1, 1))
            self.classify.bias.copy_(-(c * c).sum(1) / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(torch.relu(self.middle(torch.relu(self.split(self.pool(x))))))


def _save(folder, images):
    os.makedirs(folder, exist_ok=True)
    for k, image in enumerate(images):
        Image.fromarray(image).save(os.path.join(folder, f"{k:02d}.png"))
    return str(folder)


@pytest.fixture(scope="module")
def color(tmp_path_factory):
    """ColorNet exported with the metadata of a 3-class config, calibration scenes,
    blank images and held-out scenes (images, and an odgt with annotations)."""
    base = tmp_path_factory.mktemp("quantize")
    cfg = default_cfg.clone()
    cfg.merge_from_list(["DATASET.num_class", 3, "DATASET.imgSizes", (48, 64),
                         "DATASET.imgMaxSize", 128, "DATASET.padding_constant", 4,
                         "DATASET.class_table", ""])
    path = str(base / "color.onnx")
    export_onnx(ColorNet().eval(), path, props=metadata(cfg))
    rng = np.random.default_rng(0)
    calib = _save(base / "calib", [scene(rng, 60, 80)[0] for _ in range(8)])
    blank = _save(base / "blank", [np.full((60, 80, 3), 128, np.uint8)] * 4)
    pairs = [scene(rng, 56, 72) for _ in range(4)]
    hold = _save(base / "hold", [im for im, _ in pairs])
    os.makedirs(base / "ann")
    with open(base / "hold.odgt", "w") as fh:
        for k, (im, labels) in enumerate(pairs):
            seg = str(base / "ann" / f"{k:02d}.png")
            Image.fromarray((labels + 1).astype(np.uint8)).save(seg)  # ADE20K: 0 = unlabeled
            fh.write(json.dumps({"fpath_img": os.path.join(hold, f"{k:02d}.png"),
                                 "fpath_segm": seg, "width": 72, "height": 56}) + "\n")
    return {"base": base, "onnx": path, "calib": calib, "blank": blank, "hold": hold,
            "odgt": str(base / "hold.odgt")}


def _quantize(color, out, *extra):
    return quantize_main(["--from-onnx", color["onnx"], "--onnx", str(out), "--threads", "1",
                          "--speed-images", "2", *extra])


# ---------------------------------------------------------------- the guard

def test_good_calibration_passes_and_the_file_says_how_it_was_made(color, tmp_path, capsys):
    out = tmp_path / "int8.onnx"
    assert _quantize(color, out, "--calib", color["calib"], "--holdout", color["hold"]) == 0
    text = capsys.readouterr().out
    assert "labels equal to fp32" in text and f"wrote {out}" in text
    meta = read_metadata(str(out))
    assert meta["precision"] == "int8" and meta["int8_verified"] is True
    assert meta["num_class"] == 3 and meta["imgSizes"] == [48, 64]  # export's metadata kept
    cal = meta["int8_calibration"]
    assert cal["method"] == q.DEFAULT_METHOD and cal["images"] == 8
    assert cal["source"] == color["calib"] and len(cal["images_sha256"]) == 64
    assert meta["int8_check"]["agreement"] >= 0.995 and meta["int8_check"]["images"] == 4
    # really quantized: integer weights and QDQ nodes
    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer)
    # the calibration set is named by content: the same images elsewhere hash the same
    copy = _save(tmp_path / "copy", [np.asarray(Image.open(os.path.join(color["calib"], f)))
                                     for f in sorted(os.listdir(color["calib"]))])
    files = lambda d: [os.path.join(d, f) for f in sorted(os.listdir(d))]
    assert q.images_sha256(files(copy)) == cal["images_sha256"]


def test_blank_calibration_is_refused_in_one_line(color, tmp_path, capsys):
    out = tmp_path / "int8.onnx"
    assert _quantize(color, out, "--calib", color["blank"], "--holdout", color["hold"]) == 1
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if "error" in line]  # no progress bars
    assert len(err) == 1 and err[0].startswith("error: ") and "not written" in err[0]
    assert captured.err.rstrip().endswith(err[0])
    assert "--min-agreement 99.5 %" in err[0] and "--keep" in err[0] and "--calib" in err[0]
    assert "labels equal to fp32" in captured.out  # the table came first
    assert not out.exists() and os.listdir(tmp_path) == []  # no temporary left either
    # --keep writes it, marked unverified; loading it warns
    assert _quantize(color, out, "--calib", color["blank"], "--holdout", color["hold"],
                     "--keep") == 0
    assert "kept" in capsys.readouterr().out
    meta = read_metadata(str(out))
    assert meta["int8_verified"] is False and "min-agreement" in meta["int8_check"]["failed"]
    with pytest.warns(UserWarning, match="failed its accuracy check"):
        OnnxBackend(str(out), threads=1)


def test_annotated_holdout_compares_miou_both_ways(color, tmp_path, capsys):
    out = tmp_path / "int8.onnx"
    assert _quantize(color, out, "--calib", color["calib"], "--holdout", color["odgt"],
                     "--method", "all", "--reduce-range", "off") == 0
    text = capsys.readouterr().out
    assert "(with annotations)" in text and text.count("mIoU") == len(q.METHODS)
    assert "most accurate on the held-out images" in text
    check = read_metadata(str(out))["int8_check"]
    assert check["fp32"]["pixel_accuracy"] > 0.95  # (a class absent from these 4: mIoU 2/3)
    assert check["fp32"]["mean_iou"] - check["int8"]["mean_iou"] <= 0.005
    # a threshold nothing meets: refused, naming mIoU and --max-drop
    assert _quantize(color, out, "--calib", color["blank"], "--holdout", color["odgt"]) == 1
    err = capsys.readouterr().err
    assert "mIoU drops from" in err and "--max-drop 0.5" in err


def test_guard_thresholds():
    good = q.HeldOutResult(3, 100, 0.999)
    assert q.accuracy_guard(good) is None
    assert "99.90 %" in q.accuracy_guard(good, min_agreement=0.9995)
    scored = q.HeldOutResult(3, 100, 0.90, {"mean_iou": 0.60, "pixel_accuracy": 0.90},
                             {"mean_iou": 0.597, "pixel_accuracy": 0.89})
    # with ground truth the drops decide, not the agreement
    assert "pixel accuracy drops from 90.00 to 89.00" in q.accuracy_guard(scored)
    assert q.accuracy_guard(scored, max_drop=0.02) is None


def test_holdout_split_off_the_calibration_images(color, tmp_path, capsys):
    out = tmp_path / "int8.onnx"
    assert _quantize(color, out, "--calib", color["calib"]) == 0
    text = capsys.readouterr().out
    assert "calibration: 6 images" in text and "held out: 2 images" in text
    assert "not calibrated on" in text
    # a text list, one path a line relative to it; a missing entry is named
    listing = tmp_path / "list.txt"
    names = sorted(os.listdir(color["calib"]))
    listing.write_text("".join(f"{os.path.relpath(os.path.join(color['calib'], n), tmp_path)}\n"
                               for n in names[:5]))
    assert _quantize(color, out, "--calib", str(listing), "--holdout", color["hold"]) == 0
    assert "calibration: 5 images" in capsys.readouterr().out
    listing.write_text("nope.png\n")
    assert _quantize(color, out, "--calib", str(listing), "--holdout", color["hold"]) == 1
    assert "1 listed images not found" in capsys.readouterr().err


# ---------------------------------------------------------------- speed line

@pytest.mark.parametrize("flags,fp32_s,int8_s,expect", [
    ({"avx2", "fma"}, 1.0, 1.05, "int8 will not be faster here"),
    ({"avx2"}, 1.0, 0.5, "although EPYC-X has no int8 dot-product instructions"),
    ({"avx2", "avx512_vnni"}, 1.0, 0.5, "2.00x fp32's speed on EPYC-X (AVX-512 VNNI)"),
    ({"amx_int8", "avx_vnni"}, 1.0, 1.0, "int8 is not faster here"),
])
def test_speed_verdict_with_simulated_cpus(flags, fp32_s, int8_s, expect):
    line = q.speed_verdict(fp32_s, int8_s, flags, cpu="EPYC-X")
    assert expect in line and line.startswith("speed: ")


def test_weight_widths_tried(monkeypatch):
    """auto: 7- and 8-bit weights on an x86 CPU without VNNI/AMX (which loses less
    depends on the model), 8-bit where int8 instructions exist or off x86."""
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert q.weight_widths("auto", []) == [True, False]
    assert q.weight_widths("auto", ["AVX-512 VNNI"]) == [False]
    assert q.weight_widths("on", ["AVX-512 VNNI"]) == [True]
    assert q.weight_widths("off", []) == [False]
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert q.weight_widths("auto", []) == [False]


def test_int8_instructions_by_flag():
    assert q.int8_instructions({"avx2"}) == []
    assert q.int8_instructions({"avx512_vnni", "amx_int8"}) == ["AVX-512 VNNI", "AMX-INT8"]
    assert q.int8_instructions({"asimddp"}) == ["Arm dot product"]


# ---------------------------------------------------------------- layers kept in fp32

def test_fp32_layers_are_the_first_conv_and_the_classifier(color):
    model = onnx.load(color["onnx"])
    q._name_nodes(model)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert q.fp32_layer_nodes(model, "first") == [convs[0]]
    assert q.fp32_layer_nodes(model, "last") == [convs[-1]]
    assert q.fp32_layer_nodes(model, "both") == [convs[0], convs[-1]] and len(convs) == 3
    assert q.fp32_layer_nodes(model, "none") == []
    with pytest.raises(q.QuantizeError, match="unknown choice 'middle'"):
        q.fp32_layer_nodes(model, "middle")


def test_fp32_layers_stay_float(color, tmp_path):
    out = str(tmp_path / "int8.onnx")
    done = q.quantize_file(color["onnx"], out, q.calibration_copies(
        [os.path.join(color["calib"], f) for f in sorted(os.listdir(color["calib"]))][:3],
        Preprocess((48,), 128, 4)), count=3, fp32_layers="last", progress=False)
    model = onnx.load(out)
    (last,) = done["fp32_nodes"]
    node = next(n for n in model.graph.node if n.name == last)
    weights = {t.name: t for t in model.graph.initializer}
    assert weights[node.input[1]].data_type == onnx.TensorProto.FLOAT  # not int8 + dequantize


# ---------------------------------------------------------------- running an int8 file

def test_engine_runs_an_int8_file_at_its_precision(color, tmp_path):
    from mit_semseg.inference.engine import InferenceEngine
    from mit_semseg.inference.backends import run_precision
    out = str(tmp_path / "int8.onnx")
    assert _quantize(color, out, "--calib", color["calib"], "--holdout", color["hold"]) == 0
    int8, fp32 = OnnxBackend(out, threads=1), OnnxBackend(color["onnx"], threads=1)
    assert (int8.name, int8.precision, fp32.precision) == ("onnxruntime", "int8", "fp32")
    engine = InferenceEngine(None, device="cpu", backend=int8)
    assert engine.precision == "int8"
    assert InferenceEngine(None, device="cpu", backend=int8, precision="int8").precision \
        == "int8"
    with pytest.raises(ConfigError, match=r"VAL.precision int8: .*color.onnx is a fp32 file"):
        run_precision(fp32, "int8", "VAL")
    with pytest.raises(ConfigError, match="precision 'bf16' needs the pytorch backend"):
        InferenceEngine(None, device="cpu", backend=int8, precision="bf16")
    photo, _ = scene(np.random.default_rng(5), 50, 70)
    ref = InferenceEngine(None, device="cpu", backend=fp32).predict_image(photo).labels
    assert (np.asarray(engine.predict_image(photo).labels) == np.asarray(ref)).mean() > 0.99


def test_pytorch_backend_refuses_int8_naming_the_way(tmp_path):
    from mit_semseg.inference import Segmenter
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    with pytest.raises(ConfigError, match="python -m mit_semseg quantize"):
        Segmenter.from_config(CFG, device="cpu", opts=tiny_opts(ckpt), precision="int8")


def test_from_config_then_eval_reports_int8(tmp_path, capsys):
    """The config + checkpoint route, then eval.py's body with the int8 file: its JSON
    names the backend, the precision and the file it measured."""
    from mit_semseg.config import load_cfg
    from mit_semseg.data.synthetic import make_synthetic_dataset
    from mit_semseg.evaluation import evaluate
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    make_synthetic_dataset(str(tmp_path / "data"), num_train=3, num_val=2, size_range=(40, 60),
                           num_class=8, seed=1)
    opts = tiny_opts(ckpt, tmp_path / "data") + [
        "DATASET.list_train", str(tmp_path / "data" / "training.odgt")]
    out = str(tmp_path / "int8.onnx")
    rc = quantize_main(["--cfg", CFG, "--onnx", out, "--threads", "1", "--speed-images", "1",
                        "--reduce-range", "on", "--keep", *opts])  # random weights: accuracy is not the point here
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "exported the fp32 model" in text and "(with annotations)" in text
    assert read_metadata(out)["arch_encoder"] == "resnet18dilated"
    cfg = load_cfg(CFG, opts + ["VAL.backend", "onnxruntime", "VAL.onnx", out])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unverified file warns; see the test above
        record = evaluate(cfg, "cpu", progress=False)
    capsys.readouterr()
    assert (record["backend"], record["precision"], record["onnx"]) == ("onnxruntime", "int8", out)


# ---------------------------------------------------------------- benchmark rows

def test_benchmark_int8_rows(monkeypatch):
    """--precisions ...,int8: int8 rows beside onnxruntime fp32 and the PyTorch default."""
    import shutil

    from mit_semseg.benchmark import BenchmarkOptions, int8 as bench_int8
    from mit_semseg.benchmark.harness import Bench
    from mit_semseg.benchmark.run import resolve_options
    monkeypatch.setattr(bench_int8, "CALIBRATION_IMAGES", 2)
    options = resolve_options(BenchmarkOptions(
        preset="quick", sections=["single"], precisions=["fp32", "int8"],
        pairs=["mobilenetv2dilated+c1"], size=32, num_class=8, warmup=0, quiet=True,
        device="cpu"))
    bench = Bench(options)
    try:
        bench_int8.run_int8(bench)
    finally:
        shutil.rmtree(bench.workdir, ignore_errors=True)
    (row,) = bench.results["int8"]
    assert row["pair"] == "mobilenetv2dilated+c1" and row["calibration_images"] == 2
    assert row["quantize_s"] > 0 and row["file_mb"]["int8"] < row["file_mb"]["fp32"]
    methods = row["methods"]
    assert set(methods) == set(bench_int8.METHODS)
    assert methods["default"]["speed_vs_default"] == 1.0
    assert methods["onnxruntime-fp32"]["agreement_vs_default"] > 0.99
    assert 0 < methods["onnxruntime-int8"]["agreement_vs_onnxruntime_fp32"] <= 1
    text = bench_int8.format_int8(bench.results)
    assert "onnxruntime-int8" in text and "quantization" in text and "2 images" in text


# ---------------------------------------------------------------- the web demo

def test_web_demo_serves_an_int8_model(color, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    pytest.importorskip("httpx")
    import base64
    import io

    from fastapi.testclient import TestClient

    from mit_semseg.web.app import create_app
    from mit_semseg.web.images import read_label_png
    from mit_semseg.web.models import WebModel
    out = str(tmp_path / "int8.onnx")
    assert _quantize(color, out, "--calib", color["calib"], "--holdout", color["hold"]) == 0
    model = WebModel.from_config(CFG, device="cpu", opts=[
        "TEST.backend", "onnxruntime", "TEST.onnx", out, "TEST.onnx_trust", "file"])
    assert model.segmenter.engine.precision == "int8" and model.img_sizes == (48, 64)
    photo, truth = scene(np.random.default_rng(7), 56, 72)
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="PNG")
    with TestClient(create_app([model])) as client:
        res = client.post("/api/segment", params={"confidence": "true"},
                          files={"file": ("p.png", buf.getvalue(), "image/png")})
    assert res.status_code == 200, res.text
    labels = read_label_png(base64.b64decode(res.json()["labels_png"]))
    assert labels.shape == (56, 72) and (labels == truth).mean() > 0.95
    assert {c["name"] for c in res.json()["classes"]} <= {"class_0", "class_1", "class_2"}


def test_bad_source_files_are_one_line_errors(color, tmp_path, capsys):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    out = str(tmp_path / "int8.onnx")
    for source, words in ((str(junk), "cannot be loaded by onnxruntime"),
                          (str(tmp_path / "nope.onnx"), "ONNX model not found")):
        rc = quantize_main(["--from-onnx", source, "--onnx", out, "--calib", color["calib"]])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1 and len(err) == 1 and words in err[0], err
    # no preprocessing in the metadata and no config to take it from
    bare = str(tmp_path / "bare.onnx")
    export_onnx(ColorNet().eval(), bare)
    assert quantize_main(["--from-onnx", bare, "--onnx", out, "--calib", color["calib"]]) == 1
    assert "does not record its preprocessing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # neither --cfg nor --from-onnx
        quantize_main(["--onnx", out])
    assert usage.value.code == 2 and "give --cfg" in capsys.readouterr().err
