"""timm: encoders (a tiny ConvNeXt and a tiny Swin) through everything downstream of
the network: Segmenter in whole and slide mode at odd sizes, confidence maps, bf16,
test.py, model folders, the web API, ONNX export checked by onnxruntime. Random
weights (agreement, not accuracy); skipped without timm."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _support import run_script  # noqa: E402
from _timm import FAMILIES, make_timm_model, photo, timm_or_skip  # noqa: E402

timm_or_skip()

from mit_semseg.inference import Segmenter  # noqa: E402
from mit_semseg.inference.slide import SlideWindow  # noqa: E402

pytestmark = [pytest.mark.timm, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def model(request, tmp_path_factory):
    return make_timm_model(tmp_path_factory.mktemp(request.param), request.param)


def test_whole_and_slide_at_odd_sizes(model):
    seg = Segmenter.from_config(model, device="cpu")
    image = photo(53, 71)
    whole, confidence = seg.predict(image, return_confidence=True)
    assert whole.shape == confidence.shape == (53, 71) and len(np.unique(whole)) >= 2
    assert 0.2 < float(confidence.min()) and float(confidence.max()) <= 1.0
    # tiles smaller than the photo and no multiple of 32 or of Swin's 7x7 windows
    seg.slide = SlideWindow((40, 44), (24, 30))
    tiles, probs = seg.predict(image, return_probs=True)
    assert tiles.shape == (53, 71) and probs.shape == (5, 53, 71)
    assert np.array_equal(probs.argmax(0).numpy(), tiles)
    # one tile covering the whole photo is whole-image inference at full resolution
    seg.slide = SlideWindow((53, 71), (53, 71))
    one = seg(image)
    full = Segmenter.from_config(model, device="cpu", opts=["DATASET.imgSizes", "(53,)",
                                                            "DATASET.padding_constant", "1"])
    assert (one == full(image)).mean() > 0.999


@pytest.mark.filterwarnings("ignore:bf16 on this CPU")
def test_exact_path_and_bf16_agree_with_the_inference_copy(model):
    image = photo(45, 67, seed=1)
    fast = Segmenter.from_config(model, device="cpu")(image)
    exact = Segmenter.from_config(model, device="cpu", exact=True)(image)
    assert (fast == exact).mean() > 0.999
    bf16 = Segmenter.from_config(model, device="cpu", precision="bf16")(image)
    assert (bf16 == fast).mean() > 0.9


def test_flip_and_multi_scale(model):
    seg = Segmenter.from_config(model, device="cpu", flip=True)
    image = photo(50, 66, seed=2)
    labels = seg.predict(image, imgSizes=[40, 56, 72])
    assert labels.shape == (50, 66) and len(np.unique(labels)) >= 2


def test_model_folder_round_trip(model, tmp_path):
    from _support import assert_model_folder_round_trip
    assert_model_folder_round_trip(model, tmp_path / "folder", photo(47, 60, seed=3))


def test_test_py_in_slide_mode_with_confidence(model, tmp_path):
    image = photo(53, 71, seed=4)
    src = str(tmp_path / "photo.png")
    Image.fromarray(image).save(src)
    out = str(tmp_path / "out")
    res = run_script("test.py", "--imgs", src, "--cfg", model, "--gpu", "cpu",
                     "TEST.result", out, "TEST.save_labels", "True", "TEST.confidence", "True",
                     "TEST.mode", "slide", "TEST.crop_size", "[40, 40]",
                     "TEST.stride", "[24, 24]")
    assert res.returncode == 0, res.stderr[-3000:]
    labels = np.asarray(Image.open(os.path.join(out, "photo_labels.png"))).astype(np.int64) - 1
    seg = Segmenter.from_config(model, device="cpu", slide=SlideWindow((40, 40), (24, 24)))
    assert np.array_equal(labels, seg(image))
    conf = np.asarray(Image.open(os.path.join(out, "photo_confidence.png")))
    assert conf.shape == (53, 71) and conf.min() > 0


def test_web_api_gives_the_segmenters_labels(model):
    pytest.importorskip("fastapi")
    from _web_support import assert_web_api_gives_segmenter_labels
    assert_web_api_gives_segmenter_labels(model, photo(45, 67, seed=5))


def test_export_command_and_onnxruntime_agree_at_odd_sizes(model, tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from mit_semseg.commands import export
    path = str(tmp_path / "model.onnx")
    # the command exports, then checks onnxruntime against PyTorch at an odd size
    assert export.main(["--cfg", model, "--onnx", path]) == 0
    from mit_semseg.config import load_cfg
    from mit_semseg.export import compare_onnx
    from mit_semseg.models import build_model
    cfg = load_cfg(model)
    net = build_model(cfg, (f"{cfg.DIR}/encoder_epoch_1.pth",
                            f"{cfg.DIR}/decoder_epoch_1.pth")).eval()
    worst_abs, worst_rel = compare_onnx(path, net, ((97, 75), (75, 131), (33, 47)))
    with capsys.disabled():
        print(f"\n[{cfg.MODEL.arch_encoder} onnx] max |onnxruntime - pytorch| {worst_abs:.2e} "
              f"(relative {worst_rel:.2e})")
    assert worst_rel < 1e-4
    image = photo(61, 83, seed=6)
    for slide in (False, SlideWindow((40, 44), (24, 30))):
        torch_seg = Segmenter.from_config(model, device="cpu", slide=slide)
        onnx_seg = Segmenter.from_config(model, device="cpu", backend="onnxruntime",
                                         onnx_path=path, slide=slide)
        assert (onnx_seg(image) == torch_seg(image)).mean() >= 0.999
