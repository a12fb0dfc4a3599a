"""ONNX export (mit_semseg/export.py) and the onnxruntime backend: exported
graphs equal PyTorch at odd input sizes (dynamic H/W, PPM/UPerNet pooling bins
that do not divide the size), metadata, the CLI, the engine/Segmenter/test.py
with backend onnxruntime, and a numpy-only consumer of the file."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from mit_semseg.commands.export import main as export_main
from mit_semseg.export import (ExportPool, ScoreNetwork, compare_onnx, export_onnx, exportable,
                               metadata, read_metadata)
from mit_semseg.models import ModelBuilder

from _support import rule_tensor
from _support import CFG, NUM_CLASS, make_tiny_checkpoint, run_script, tiny_opts

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ODD_SIZES = [(97, 75), (75, 131), (33, 47), (17, 23), (130, 66)]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rule_network(arch_encoder: str, arch_decoder: str, fc_dim: int,
                 num_class: int = 150) -> ScoreNetwork:
    enc = ModelBuilder.build_encoder(arch_encoder, fc_dim, "", pretrained=False)
    dec = ModelBuilder.build_decoder(arch_decoder, fc_dim, num_class, "", use_softmax=True)
    for module in (enc, dec):
        module.load_state_dict({k: rule_tensor(k, v.shape) for k, v in module.state_dict().items()})
    return ScoreNetwork(enc, dec).eval()


@pytest.mark.parametrize("bins", [1, 2, 3, 6, (2, 3), (None, 4)])
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (13, 10), (6, 6), (25, 19), (4, 2)])
def test_export_pool_equals_adaptive_avg_pool(bins, size):
    x = torch.randn(2, 5, *size)
    ref = nn.AdaptiveAvgPool2d(bins)(x)
    got = ExportPool(bins)(x)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_exportable_swaps_only_the_pooling():
    net = rule_network("resnet50", "upernet_lite", 2048, num_class=8)
    copy = exportable(net)
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in copy.modules())
    assert sum(isinstance(m, ExportPool) for m in copy.modules()) == 4
    assert any(isinstance(m, nn.AdaptiveAvgPool2d) for m in net.modules())  # original kept
    x = torch.randn(1, 3, 75, 97)
    with torch.no_grad():
        assert torch.allclose(copy(x), net(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("pair,sizes", [
    (("resnet18dilated", "ppm_deepsup", 512), ODD_SIZES),
    (("resnet50", "upernet_lite", 2048), ODD_SIZES),
    # no pooling: two sizes check the dynamic axes (HRNet: branch fusion by size)
    (("mobilenetv2dilated", "c1_deepsup", 320), ODD_SIZES[:2]),
    (("hrnetv2", "c1", 720), ODD_SIZES[2:4]),
])
def test_exported_pair_equals_pytorch_at_odd_sizes(tmp_path, pair, sizes):
    net = rule_network(*pair)
    path = str(tmp_path / "model.onnx")
    export_onnx(exportable(net), path, props={"note": json.dumps("x")})
    diff_abs, diff_rel = compare_onnx(path, net, sizes=[(64, 64)] + sizes)
    assert diff_rel < 1e-4, (diff_abs, diff_rel)
    assert read_metadata(path) == {"note": "x"}


def test_metadata_holds_class_table_and_preprocessing():
    from mit_semseg.config import load_cfg
    cfg = load_cfg(os.path.join(os.path.dirname(CFG), "ade20k-resnet18dilated-ppm_deepsup.yaml"))
    meta = {k: json.loads(v) for k, v in metadata(cfg).items()}
    assert meta["num_class"] == 150 and len(meta["class_names"]) == 150
    assert meta["class_names"][0] == "wall" and meta["class_colors"][0] == [120, 120, 120]
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert meta["imgSizes"] == [300, 375, 450, 525, 600] and meta["imgMaxSize"] == 1000
    assert meta["padding_constant"] == 8
    assert (meta["arch_encoder"], meta["arch_decoder"], meta["fc_dim"]) == (
        "resnet18dilated", "ppm_deepsup", 512)


# ---------------------------------------------------------------- CLI, backend, scripts

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The CLI's export of the tiny synthetic-demo model (resnet18dilated + c1, 8 classes)."""
    base = tmp_path_factory.mktemp("onnx")
    ckpt = make_tiny_checkpoint(base / "ckpt")
    path = str(base / "out" / "model.onnx")
    opts = tiny_opts(ckpt)
    rc = export_main(["--cfg", CFG, "--checkpoint-dir", ckpt, "--checkpoint", "epoch_1.pth",
                      "--onnx", path, *opts])
    assert rc == 0
    return base, ckpt, path, opts


def test_cli_writes_metadata_and_reports_the_difference(exported, capsys):
    _, ckpt, path, opts = exported
    meta = read_metadata(path)
    assert meta["num_class"] == NUM_CLASS and meta["class_names"][3] == "class_3"
    assert meta["imgSizes"] == [40, 56] and meta["imgMaxSize"] == 120
    # explicit weight files; an impossible tolerance fails with exit code 1
    rc = export_main(["--cfg", CFG, "--encoder-weights", os.path.join(ckpt, "encoder_epoch_1.pth"),
                      "--decoder-weights", os.path.join(ckpt, "decoder_epoch_1.pth"),
                      "--onnx", path + ".2", "--tolerance", "-1", *opts])
    out = capsys.readouterr()
    assert rc == 1
    # the relative difference first, with what the tolerance is relative to
    line = next(x for x in out.out.splitlines() if x.startswith("self-check"))
    assert line.index("of the largest |score|") < line.index("absolute difference")
    assert "tolerance -1, relative to that score" in line and "differ from PyTorch" in out.err


def test_cli_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    rc = export_main(["--cfg", CFG, "--checkpoint-dir", str(tmp_path), "--onnx",
                      str(tmp_path / "m.onnx")])
    assert rc == 1  # an error of the input (exit status 2 is for usage errors)
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and str(tmp_path) in err
    assert "--checkpoint-dir" in err and "--encoder-weights" in err  # export's own flags
    assert "VAL.checkpoint" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_engine_with_onnx_backend_equals_pytorch(exported):
    from mit_semseg.inference import Segmenter
    from mit_semseg.data.synthetic import make_scene
    _, ckpt, path, opts = exported
    torch_seg = Segmenter.from_config(CFG, device="cpu", opts=opts, flip=True)
    onnx_seg = Segmenter.from_config(CFG, device="cpu", opts=opts, flip=True,
                                     backend="onnxruntime", onnx_path=path)
    assert onnx_seg.engine.encoder is None and onnx_seg.engine.num_class == NUM_CLASS
    photo, _ = make_scene(np.random.default_rng(3), 77, 103, NUM_CLASS)
    ref_labels, ref_probs = torch_seg.predict(photo, return_probs=True)  # 2 scales + flip
    labels, probs = onnx_seg.predict(photo, return_probs=True)
    assert torch.allclose(probs, ref_probs, atol=1e-5)
    assert (labels == ref_labels).mean() >= 0.999
    # sliding window with the onnxruntime backend
    from mit_semseg.inference.slide import SlideWindow
    window = SlideWindow((48, 64), (32, 40))
    torch_seg.slide = onnx_seg.slide = window
    assert (onnx_seg(photo) == torch_seg(photo)).mean() >= 0.999
    with pytest.raises(ValueError, match="imgSizes does not apply"):
        onnx_seg.predict(photo, imgSizes=[40])


def test_backend_config_errors(exported, tmp_path):
    from mit_semseg.config import ConfigError
    from mit_semseg.inference import Segmenter
    _, _, path, opts = exported
    with pytest.raises(ConfigError, match=r"unknown backend 'tensorrt'.*'pytorch', 'onnxruntime'"):
        Segmenter.from_config(CFG, device="cpu", opts=opts + ["TEST.backend", "tensorrt"])
    with pytest.raises(ConfigError, match="needs the path of an exported model"):
        Segmenter.from_config(CFG, device="cpu", opts=opts + ["TEST.backend", "onnxruntime"])
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        Segmenter.from_config(CFG, device="cpu", backend="onnxruntime",
                              onnx_path=str(tmp_path / "nope.onnx"), opts=opts)
    with pytest.raises(ConfigError, match="the file's num_class 8 vs config DATASET.num_class 5"):
        Segmenter.from_config(CFG, device="cpu", backend="onnxruntime", onnx_path=path,
                              opts=opts + ["DATASET.num_class", "5"])
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="junk.onnx: cannot be loaded"):
        Segmenter.from_config(CFG, device="cpu", backend="onnxruntime",
                              onnx_path=str(tmp_path / "junk.onnx"), opts=opts)


def test_test_script_with_onnxruntime_and_sliding_window(exported, tmp_path):
    from PIL import Image
    from mit_semseg.data.synthetic import make_scene
    base, _, path, opts = exported
    photo, _ = make_scene(np.random.default_rng(4), 90, 130, NUM_CLASS)
    Image.fromarray(photo).save(tmp_path / "scene.png")
    out = tmp_path / "out"
    res = run_script("test.py", "--imgs", tmp_path / "scene.png", "--cfg", CFG, "--gpu", "cpu",
                     *opts, "TEST.result", out, "TEST.backend", "onnxruntime", "TEST.onnx", path,
                     "TEST.mode", "slide", "TEST.crop_size", "[64, 64]", "TEST.stride", "[40, 40]")
    assert res.returncode == 0, res.stderr[-3000:]
    assert np.asarray(Image.open(out / "scene.png")).shape == (90, 260, 3)
    assert "Predictions in [" in res.stdout


def test_evaluate_with_onnxruntime_in_both_modes(exported, capsys):
    """eval.py's body with VAL.backend onnxruntime gives PyTorch's numbers, whole
    image and sliding window; the JSON record names backend and mode."""
    from mit_semseg.config import load_cfg
    from mit_semseg.evaluation import evaluate
    from mit_semseg.data.synthetic import make_synthetic_dataset
    base, ckpt, path, _ = exported
    make_synthetic_dataset(str(base / "data"), num_train=0, num_val=3, size_range=(50, 90),
                           num_class=NUM_CLASS, seed=2)
    results = {}
    for mode in ("whole", "slide"):
        for backend in ("pytorch", "onnxruntime"):
            cfg = load_cfg(CFG, tiny_opts(ckpt, base / "data") + [
                "DATASET.class_table", "",  # the class_k names the file was exported with
                "VAL.backend", backend, "VAL.onnx", path, "VAL.mode", mode,
                "VAL.crop_size", "[48, 48]", "VAL.stride", "[32, 32]"])
            results[mode, backend] = evaluate(cfg, "cpu", progress=False)
    capsys.readouterr()
    for mode in ("whole", "slide"):
        ref, got = results[mode, "pytorch"], results[mode, "onnxruntime"]
        assert got["backend"] == "onnxruntime" and got["mode"] == mode
        assert got["mean_iou"] == pytest.approx(ref["mean_iou"], abs=1e-3)
        assert got["pixel_accuracy"] == pytest.approx(ref["pixel_accuracy"], abs=1e-3)
    assert results["slide", "pytorch"]["mean_iou"] != results["whole", "pytorch"]["mean_iou"]


# ---------------------------------------------------------------- numpy only (docs/deployment.md)

def numpy_segment(model_path: str, photo: np.ndarray) -> np.ndarray:
    """docs/deployment.md's example: onnxruntime, numpy and PIL only, single scale."""
    import onnxruntime
    from PIL import Image

    session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}

    def axis(n_in, n_out):  # bilinear weights, align_corners=False (PyTorch's convention)
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)

    H, W = photo.shape[:2]
    short, pad = meta["imgSizes"][0], meta["padding_constant"]
    scale = min(short / min(H, W), meta["imgMaxSize"] / max(H, W))
    h, w = (-(-max(1, int(n * scale)) // pad) * pad for n in (H, W))
    x = np.asarray(Image.fromarray(photo).resize((w, h), Image.BILINEAR), np.float32) / 255
    x = (x - np.float32(meta["mean"])) / np.float32(meta["std"])
    scores = session.run(None, {"image": x.transpose(2, 0, 1)[None]})[0][0]  # C x h' x w'
    r0, r1, wr = axis(scores.shape[1], H)
    c0, c1, wc = axis(scores.shape[2], W)
    rows = scores[:, r0] * (1 - wr)[:, None] + scores[:, r1] * wr[:, None]
    return (rows[:, :, c0] * (1 - wc) + rows[:, :, c1] * wc).argmax(0)


def test_numpy_only_inference_matches_the_package(exported):
    from mit_semseg.inference import Segmenter
    from mit_semseg.data.synthetic import make_scene
    _, _, path, opts = exported
    seg = Segmenter.from_config(CFG, device="cpu", opts=opts)
    for seed, (h, w) in enumerate([(83, 121), (140, 61)]):
        photo, _ = make_scene(np.random.default_rng(seed), h, w, NUM_CLASS)
        ours = numpy_segment(path, photo)
        ref = seg.predict(photo, imgSizes=[40])
        assert ours.shape == (h, w)
        assert (ours == ref).mean() >= 0.999


class _StubEncoder(nn.Module):
    """Stride-8 features, enough to drive a PPM head at odd feature sizes."""

    def __init__(self, fc_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, fc_dim, 3, stride=8, padding=1)

    def forward(self, x, return_feature_maps=False):
        return [self.conv(x)]


def test_dynamo_exporter_pools_correctly_at_odd_sizes(tmp_path):
    pytest.importorskip("onnxscript")  # the dynamo exporter's dependency (not in the extras)
    torch.manual_seed(0)
    dec = ModelBuilder.build_decoder("ppm", 16, 6, "", use_softmax=True)
    net = ScoreNetwork(_StubEncoder(16), dec).eval()
    path = str(tmp_path / "dynamo.onnx")
    export_onnx(exportable(net), path, exporter="dynamo", opset=18)
    diff_abs, diff_rel = compare_onnx(path, net, sizes=ODD_SIZES)
    assert diff_rel < 1e-4, (diff_abs, diff_rel)


def test_unknown_exporter_is_named():
    with pytest.raises(ValueError, match=r"unknown exporter 'jit'.*'torchscript', 'dynamo'"):
        export_onnx(nn.Identity(), "x.onnx", exporter="jit")
