"""The modern families (a tiny SegFormer, a tiny frozen DINOv2 + linear head) through
everything downstream, one template for both: Segmenter in whole and slide mode at
odd sizes (DINOv2's tiles, not multiples of 14, are padded and cropped back in the
encoder), test.py, a model folder, the web API; ONNX export with onnxruntime's
labels for SegFormer, and for DINOv2 the one line that says why it cannot export
(timm resamples the position embeddings with antialiased bicubic interpolation,
which the ONNX exporter at opset 17 cannot write)."""
from __future__ import annotations

import numpy as np
import pytest

from _modern import make_model, photo, run_test_py
from mit_semseg.inference import Segmenter
from mit_semseg.inference.slide import SlideWindow

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["segformer", pytest.param("dinov2", marks=pytest.mark.timm)])
def model(request, tmp_path_factory):
    if request.param == "dinov2":
        pytest.importorskip("timm")
    return make_model(tmp_path_factory.mktemp(request.param), request.param)


def test_whole_and_slide_at_odd_sizes_and_test_py(model, tmp_path):
    seg = Segmenter.from_config(model, device="cpu")
    image = photo(53, 71)
    whole = seg(image)
    assert whole.shape == (53, 71) and len(np.unique(whole)) >= 2
    seg.slide = SlideWindow((40, 40), (24, 24))  # tiles smaller than the image, not x32 or x14
    tiles = seg(image)
    assert tiles.shape == (53, 71) and (tiles == whole).mean() > 0.3
    res, labels = run_test_py(tmp_path, model, image, "TEST.mode", "slide",
                              "TEST.crop_size", "[40, 40]", "TEST.stride", "[24, 24]")
    assert res.returncode == 0, res.stderr[-3000:]
    assert np.array_equal(labels, tiles)


def test_model_folder_round_trip(model, tmp_path):
    from _support import assert_model_folder_round_trip
    assert_model_folder_round_trip(model, tmp_path / "folder", photo(47, 60, seed=1))


def test_web_api_gives_the_segmenters_labels(model):
    pytest.importorskip("fastapi")
    from _web_support import assert_web_api_gives_segmenter_labels
    assert_web_api_gives_segmenter_labels(model, photo(45, 67, seed=2))


def test_segformer_onnx_export_agrees_with_pytorch_at_odd_sizes(model, tmp_path, capsys):
    if "segformer" not in model:
        pytest.skip("SegFormer's export")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from mit_semseg.export import compare_onnx, export_onnx, exportable, metadata
    from mit_semseg.config import load_cfg
    from mit_semseg.models import build_model
    cfg = load_cfg(model)
    net = build_model(cfg, (f"{cfg.DIR}/encoder_epoch_1.pth",
                            f"{cfg.DIR}/decoder_epoch_1.pth")).eval()
    path = str(tmp_path / "segformer.onnx")
    export_onnx(exportable(net), path, props=metadata(cfg))
    worst_abs, worst_rel = compare_onnx(path, net, ((97, 75), (75, 131), (33, 47)))
    with capsys.disabled():
        print(f"\n[segformer onnx] max |onnxruntime - pytorch| {worst_abs:.2e} "
              f"(relative {worst_rel:.2e})")
    assert worst_rel < 1e-4
    torch_seg = Segmenter.from_config(model, device="cpu")
    onnx_seg = Segmenter.from_config(model, device="cpu", backend="onnxruntime", onnx_path=path)
    image = photo(61, 83, seed=3)
    assert (onnx_seg(image) == torch_seg(image)).mean() >= 0.999


def test_dinov2_onnx_export_names_why_it_cannot(model, tmp_path, capsys):
    """timm interpolates DINOv2's position embeddings for each input size with
    antialiased bicubic resampling (aten::_upsample_bicubic2d_aa), which the
    torchscript ONNX exporter cannot write at opset 17: no dynamic-size graph."""
    if "dinov2" not in model:
        pytest.skip("DINOv2's export")
    pytest.importorskip("onnx")
    from mit_semseg.commands import export
    from mit_semseg.config import load_cfg
    from mit_semseg.export import export_onnx, exportable
    from mit_semseg.export.onnx import OnnxExportError
    from mit_semseg.models import build_model
    net = build_model(load_cfg(model)).eval()
    with pytest.raises(OnnxExportError, match="_upsample_bicubic2d_aa"):
        export_onnx(exportable(net), str(tmp_path / "dinov2.onnx"), example_size=(56, 70))
    capsys.readouterr()
    assert export.main(["--cfg", model, "--onnx", str(tmp_path / "cmd.onnx")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "_upsample_bicubic2d_aa" in err[0]
    assert "Traceback" not in "\n".join(err)
