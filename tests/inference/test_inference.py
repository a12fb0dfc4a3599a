"""Inference engine: the exact path equals the straightforward multi-scale
procedure (bit for bit where this machine's fusion check passes) and the
original's module-forward loop up to float ties; the default path (inference
copy) gives the same labels up to float ties; the Segmenter API."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mit_semseg.config import load_cfg
from mit_semseg.data.transforms import Preprocess
from mit_semseg.inference.fusion import banding_exact
from mit_semseg.inference import (CheckpointNotFoundError, DeviceUnavailableError, InferenceEngine,
                                  Segmenter, resolve_device)
from mit_semseg.models import ModelBuilder, SegmentationModule, SegmentationNetwork

from _support import assert_same_labels_up_to_ties

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_CLASS = 8


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    enc = ModelBuilder.build_encoder("resnet18dilated", 512, "", pretrained=False).eval()
    dec = ModelBuilder.build_decoder("c1", 512, NUM_CLASS, "", use_softmax=True).eval()
    return enc, dec


# ---------------------------------------------------------------- engine vs procedures

def multi_scale(img, sizes):
    opt = load_cfg(None, ["DATASET.imgSizes", str(tuple(sizes)), "DATASET.imgMaxSize", "200"]).DATASET
    return Preprocess.from_config(opt).scales(img)


def straightforward(enc, dec, img_data, size, flip):
    """The full-buffer procedure written out: per copy (and mirrored copy) resize
    the scores to full size, softmax over classes (dim 1), sum probability / count."""
    maps = []
    with torch.no_grad():
        for img in img_data:
            maps.append(dec.logits(enc(img, return_feature_maps=True)))
            if flip:
                maps.append(dec.logits(enc(img.flip(-1), return_feature_maps=True)).flip(-1))
        scores = torch.zeros(1, maps[0].shape[1], size[0], size[1])
        for m in maps:
            full = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            scores = scores + F.softmax(full, dim=1) / len(maps)
    return torch.max(scores, dim=1).indices[0].numpy(), scores[0]


def original_loop(enc, dec, img_data, size):
    """The original eval.py/test.py loop (module forward with segSize)."""
    module = SegmentationModule(enc, dec, torch.nn.NLLLoss(ignore_index=-1)).eval()
    with torch.no_grad():
        scores = torch.zeros(1, NUM_CLASS, size[0], size[1])
        for img in img_data:
            scores = scores + module({"img_data": img}, segSize=size) / len(img_data)
        _, pred = torch.max(scores, dim=1)
    return pred[0].numpy(), scores[0]


IMAGES = [((75, 97), (40, 57)), ((101, 64), (33, 48, 64)), ((133, 41), (50,))]


@pytest.mark.parametrize("flip", [False, True])
def test_engine_equals_straightforward_procedure(tiny_model, flip):
    enc, dec = tiny_model
    rng = np.random.default_rng(7)
    for (h, w), sizes in IMAGES:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        img_data = multi_scale(img, sizes)
        engine = InferenceEngine(SegmentationNetwork(enc, dec), device="cpu", flip=flip, exact=True,
                                 band_bytes=3 * NUM_CLASS * w * 4)  # ignored when exact
        pred = engine.predict(img_data, (h, w), return_probs=True)
        labels, scores = straightforward(enc, dec, img_data, (h, w), flip)
        assert np.array_equal(pred.labels, labels) and torch.equal(pred.probs, scores)
        # the default engine (inference copy): same labels up to float ties
        fast = InferenceEngine(SegmentationNetwork(enc, dec), device="cpu", flip=flip,
                               band_bytes=3 * NUM_CLASS * w * 4).predict(img_data, (h, w))
        assert_same_labels_up_to_ties(fast.labels, scores)


def test_exact_engine_equals_the_original_loop_bit_for_bit(tiny_model):
    enc, dec = tiny_model
    rng = np.random.default_rng(11)
    for (h, w), sizes in IMAGES:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        img_data = multi_scale(img, sizes)
        engine = InferenceEngine(SegmentationNetwork(enc, dec), device="cpu", exact=True)
        pred = engine.predict(img_data, (h, w), return_probs=True)
        labels, scores = original_loop(enc, dec, img_data, (h, w))
        assert np.array_equal(pred.labels, labels) and torch.equal(pred.probs, scores)


def test_scale_logits_and_fuse_are_the_two_steps(tiny_model):
    enc, dec = tiny_model
    engine = InferenceEngine(SegmentationNetwork(enc, dec), device="cpu", flip=True)
    img_data = multi_scale(Image.new("RGB", (60, 90), (120, 30, 200)), (32, 48))
    logits = engine.scale_logits(img_data)
    assert len(logits) == 4 and all(x.dtype == torch.float32 and x.shape[:2] == (1, NUM_CLASS)
                                    for x in logits)
    a = engine.fuse(logits, (90, 60)).labels
    assert np.array_equal(a, engine.predict(img_data, (90, 60)).labels)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs_and_fuses_in_float32(tiny_model, precision):
    enc, dec = tiny_model
    engine = InferenceEngine(SegmentationNetwork(enc, dec), device="cpu", precision=precision)
    img_data = multi_scale(Image.new("RGB", (90, 70), (20, 140, 60)), (40,))
    assert all(x.dtype == torch.float32 for x in engine.scale_logits(img_data))
    assert engine.predict(img_data, (70, 90)).labels.shape == (70, 90)
    with pytest.raises(ValueError, match="precision"):
        InferenceEngine(SegmentationNetwork(enc, dec), device="cpu", precision="int8")


def test_bf16_without_onednn_bf16_warns_and_still_runs(tiny_model, monkeypatch):
    """AVX2-only CPUs (AMD Zen 2/3, older Intel): oneDNN has no bf16 convolution there."""
    from mit_semseg.accel import fused
    from mit_semseg.inference import backends
    monkeypatch.setattr(backends, "mkldnn_bf16_available", lambda: False)
    monkeypatch.setattr(fused, "_MKLDNN_BF16", False)
    enc, dec = tiny_model
    with pytest.warns(UserWarning, match="oneDNN has no bf16 convolutions"):
        engine = InferenceEngine(SegmentationNetwork(enc, dec), device="cpu", precision="bf16")
    img_data = multi_scale(Image.new("RGB", (90, 70), (20, 140, 60)), (40,))
    with torch.inference_mode():
        logits = engine.scale_logits(img_data)
    ref = InferenceEngine(SegmentationNetwork(enc, dec), device="cpu").scale_logits(img_data)
    assert torch.isfinite(logits[0]).all()
    torch.testing.assert_close(logits[0], ref[0], rtol=0.05, atol=0.05 * ref[0].abs().max().item())


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(-1).type == "cpu" and resolve_device("-1").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
            resolve_device(0)
        with pytest.raises(DeviceUnavailableError):
            resolve_device("cuda:1")


# ---------------------------------------------------------------- Python API

@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("ckpt")
    enc, dec = tiny_model
    torch.save(enc.state_dict(), folder / "encoder_epoch_1.pth")
    torch.save(dec.state_dict(), folder / "decoder_epoch_1.pth")
    return folder


OPTS = ["MODEL.arch_decoder", "c1", "DATASET.imgSizes", "(40, 56)", "DATASET.imgMaxSize", "120"]
CFG = os.path.join(ROOT, "config", "synthetic-demo.yaml")


def test_segmenter_on_path_pil_and_numpy(tmp_path, checkpoint_dir):
    seg = Segmenter.from_config(CFG, checkpoint_dir=str(checkpoint_dir), checkpoint="epoch_1.pth",
                                device="cpu", opts=OPTS)
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(arr).save(path)
    from_path = seg(str(path))
    assert from_path.shape == (70, 90) and from_path.dtype == np.int64
    assert np.array_equal(seg(Image.open(path)), from_path)
    assert np.array_equal(seg(arr), from_path)
    assert np.array_equal(seg(Image.fromarray(arr).convert("RGBA")), from_path)
    labels, probs = seg.predict(arr, return_probs=True)
    assert tuple(probs.shape) == (NUM_CLASS, 70, 90)
    assert torch.allclose(probs.sum(0), torch.ones(70, 90), atol=1e-5)
    assert np.array_equal(probs.argmax(0).numpy(), labels)
    colors = seg.colorize(labels)
    assert colors.shape == (70, 90, 3) and colors.dtype == np.uint8
    shares = seg.describe(labels)
    assert sum(s.percent for s in shares) == pytest.approx(100.0)
    assert shares == sorted(shares, key=lambda s: -s.percent)
    assert all(s.name == f"class_{s.index}" for s in shares)
    # explicit weight files give the same model
    seg2 = Segmenter.from_config(CFG, encoder_weights=str(checkpoint_dir / "encoder_epoch_1.pth"),
                                 decoder_weights=str(checkpoint_dir / "decoder_epoch_1.pth"),
                                 device="cpu", opts=OPTS)
    assert np.array_equal(seg2(arr), from_path)
    with pytest.raises(TypeError):
        seg(arr.astype(np.float32))


def test_segmenter_applies_exif_orientation_to_paths(tmp_path, checkpoint_dir):
    seg = Segmenter.from_config(CFG, checkpoint_dir=str(checkpoint_dir), checkpoint="epoch_1.pth",
                                device="cpu", opts=OPTS)
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 64, 3), dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif)
    assert seg(str(path)).shape == (64, 40)
    assert seg(Image.open(path)).shape == (40, 64)  # PIL input: pixels as given


def test_segmenter_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match=r"encoder_epoch_4\.pth.*train"):
        Segmenter.from_config(CFG, checkpoint_dir=str(tmp_path), device="cpu", opts=OPTS)
    with pytest.raises(CheckpointNotFoundError,
                       match=r"python3 -m mit_semseg pretrained ade20k-resnet50dilated-ppm_deepsup"):
        Segmenter.from_config(os.path.join(ROOT, "config", "ade20k-resnet50dilated-ppm_deepsup.yaml"),
                              checkpoint_dir=str(tmp_path / "ade20k-resnet50dilated-ppm_deepsup"),
                              device="cpu")


def test_exact_switch_runs_the_modules_as_given_with_the_same_labels(checkpoint_dir):
    from mit_semseg.accel import FusedConv2d
    common = dict(checkpoint_dir=str(checkpoint_dir), checkpoint="epoch_1.pth", device="cpu")
    default = Segmenter.from_config(CFG, opts=OPTS, **common)
    exact = Segmenter.from_config(CFG, opts=OPTS + ["TEST.exact", "True"], **common)
    assert exact.engine.exact and not default.engine.exact
    assert any(isinstance(m, FusedConv2d) for m in default.engine.encoder.modules())
    assert not any(isinstance(m, FusedConv2d) for m in exact.engine.encoder.modules())
    arr = np.random.default_rng(9).integers(0, 256, (61, 83, 3), dtype=np.uint8)
    _, p_exact = exact.predict(arr, return_probs=True)
    labels_fast, p_fast = default.predict(arr, return_probs=True)
    assert torch.allclose(p_exact, p_fast, atol=1e-5)
    assert_same_labels_up_to_ties(labels_fast, p_exact)
    # the keyword overrides the config
    assert Segmenter.from_config(CFG, opts=OPTS, exact=True, **common).engine.exact


def test_old_fast_keys_still_load_with_a_pointer_to_exact(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("TRAIN:\n  fast: True\n  channels_last: False\nVAL:\n  fast: False\n")
    with pytest.warns(FutureWarning, match="TRAIN.exact"):
        cfg = load_cfg(str(old), ["TEST.fast", "True"])
    assert cfg.TRAIN.exact is False and cfg.VAL.exact is False and cfg.TEST.exact is False
    assert "fast" not in cfg.TEST
