"""Confidence maps and class probabilities on every path: fusion (exact and
banded) gives the top probability without changing the labels; the Segmenter
returns probabilities and confidence in every precision, in sliding-window
mode and with onnxruntime; test.py writes confidence PNGs and float16
probabilities whose argmax are the labels it writes; slide and whole-image
inference agree away from tile seams; the exact engine's probabilities are the
original's on the parity weights."""
import io
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from mit_semseg.config import load_cfg
from mit_semseg.data.classes import class_colors
from mit_semseg.data.transforms import Preprocess
from mit_semseg.inference import InferenceEngine, Segmenter, SlideWindow
from mit_semseg.data.io import confidence_uint8
from mit_semseg.inference.fusion import fuse
from mit_semseg.models import ModelBuilder, SegmentationNetwork
from mit_semseg.prediction import companion_names, run_test

from _support import (CFG, NUM_CLASS, PARITY_DIR, TinyNet, assert_same_labels_up_to_ties,
                      load_case, make_tiny_checkpoint, rule_state_dict, tiny_opts)

pytestmark = pytest.mark.usefixtures("one_thread")

# float16 keeps 11 significant bits: each stored probability is within 2^-11 of
# its float32 value relative to itself, so their sum is within 2^-11 of 1
F16_SUM_TOL = 2.0 ** -11 + 1e-6


# ---------------------------------------------------------------- fusion

@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("copies", [1, 3])
@pytest.mark.parametrize("banded", [False, True])
def test_fused_confidence_is_the_top_probability(exact, copies, banded):
    gen = torch.Generator().manual_seed(copies)
    C, size = 12, (67, 75)  # H + W > 128: the general kernels, bands possible
    logits = [torch.randn(1, C, h, w, generator=gen) * 4
              for h, w in ((11, 9), (17, 13), (70, 150))[:copies]]
    band = C * size[1] * 4 * 5 if banded else 0
    full = fuse(logits, size, return_probs=True, band_bytes=band, exact=exact)
    plain = fuse(logits, size, band_bytes=band, exact=exact)
    got = fuse(logits, size, band_bytes=band, exact=exact, return_confidence=True)
    assert got.probs is None and plain.confidence is None and full.confidence is None
    assert got.confidence.dtype == np.float32 and got.confidence.shape == size
    assert np.array_equal(got.labels, plain.labels) and np.array_equal(got.labels, full.labels)
    top = full.probs.max(dim=0).values.numpy()
    if exact:  # the maximum of the original's full-size probabilities, bit for bit
        assert np.array_equal(got.confidence, top)
    else:
        np.testing.assert_allclose(got.confidence, top, rtol=0, atol=1e-6)
    both = fuse(logits, size, True, band, exact=exact, return_confidence=True)
    assert np.array_equal(both.confidence, top)


# ---------------------------------------------------------------- Segmenter

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _segmenter(ckpt, **kw):
    return Segmenter.from_config(CFG, checkpoint_dir=ckpt, checkpoint="epoch_1.pth", device="cpu",
                                 opts=tiny_opts(ckpt), **kw)


def _photo(h=45, w=62, seed=9):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _check_outputs(labels, probs, conf, shape):
    assert tuple(probs.shape) == (NUM_CLASS, *shape) and probs.dtype == torch.float32
    assert conf.shape == shape and conf.dtype == np.float32
    assert torch.allclose(probs.sum(0), torch.ones(shape), atol=1e-5)
    assert_same_labels_up_to_ties(labels, probs)
    np.testing.assert_allclose(conf, probs.max(0).values.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_segmenter_probs_and_confidence_in_every_precision(ckpt, precision):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # bf16 on CPUs without oneDNN's bf16
        seg = _segmenter(ckpt, precision=precision)
    arr = _photo()
    labels, probs, conf = seg.predict(arr, return_probs=True, return_confidence=True)
    _check_outputs(labels, probs, conf, arr.shape[:2])
    if precision != "fp32":
        return
    # every combination of the flags: the same labels, the documented tuples
    only_labels = seg.predict(arr)
    assert np.array_equal(only_labels, labels)
    l2, p2 = seg.predict(arr, return_probs=True)
    assert np.array_equal(l2, labels) and torch.equal(p2, probs)
    l3, c3 = seg.predict(arr, return_confidence=True)
    assert np.array_equal(l3, labels)
    np.testing.assert_allclose(c3, conf, rtol=0, atol=1e-6)


def test_segmenter_in_slide_mode(ckpt):
    seg = _segmenter(ckpt, slide=SlideWindow(crop_size=(40, 48), stride=(24, 32)))
    arr = _photo(56, 70)
    labels, probs, conf = seg.predict(arr, return_probs=True, return_confidence=True)
    _check_outputs(labels, probs, conf, arr.shape[:2])
    # without the probabilities: computed band by band, the same numbers
    l2, c2 = seg.predict(arr, return_confidence=True)
    assert np.array_equal(l2, labels) and np.array_equal(c2, conf)
    np.testing.assert_allclose(c2, probs.max(dim=0).values.numpy(), rtol=0, atol=1e-6)


def test_segmenter_with_onnxruntime(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from mit_semseg.inference.backends import OnnxBackend
    net = TinyNet(NUM_CLASS).eval()
    path = str(tmp_path / "tiny.onnx")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 64, 64),), path, dynamo=False,
                          input_names=["image"], output_names=["scores"],
                          dynamic_axes={"image": {2: "h", 3: "w"}, "scores": {2: "sh", 3: "sw"}})
    cfg = load_cfg(CFG, ["DATASET.imgSizes", "(40, 56)", "DATASET.imgMaxSize", "120",
                         "DATASET.class_table", ""])
    pre = Preprocess.from_config(cfg.DATASET)
    onnx_seg = Segmenter(InferenceEngine(None, device="cpu", backend=OnnxBackend(path),
                                         preprocess=pre, flip=True), cfg.DATASET)
    torch_seg = Segmenter(InferenceEngine(None, device="cpu", backend=_Scores(net),
                                          preprocess=pre, flip=True), cfg.DATASET)
    arr = _photo(66, 95)
    for window in (None, SlideWindow(crop_size=(48, 48), stride=(32, 40))):
        onnx_seg.slide = torch_seg.slide = window
        labels, probs, conf = onnx_seg.predict(arr, return_probs=True, return_confidence=True)
        _check_outputs(labels, probs, conf, arr.shape[:2])
        _, ref = torch_seg.predict(arr, return_probs=True)
        assert torch.allclose(probs, ref, atol=1e-5)




class _Scores:
    """A network as an engine backend (``backend(img)`` -> scores, ``num_class``)."""

    def __init__(self, net: nn.Module) -> None:
        self.net, self.num_class = net, net.body[-1].out_channels

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return self.net(img)


# ---------------------------------------------------------------- test.py

def test_test_py_writes_confidence_and_probabilities(ckpt, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name, (h, w) in (("a.png", (61, 83)), ("b.jpg", (50, 40))):
        Image.fromarray(_photo(h, w, seed=h)).save(imgs / name)
    out = tmp_path / "out"
    cfg = load_cfg(CFG, tiny_opts(ckpt) + ["TEST.result", str(out), "TEST.confidence", "True",
                                           "TEST.save_probs", "True"])
    assert run_test(cfg, str(imgs), "cpu", progress=False, stream=io.StringIO()) == 0
    assert sorted(os.listdir(out)) == ["a.png", "a_confidence.png", "a_probs.npz", "b.png",
                                       "b_confidence.png", "b_probs.npz"]
    colors = class_colors(cfg)
    assert len({tuple(c) for c in colors}) == NUM_CLASS
    ties = 0
    for stem, (h, w) in (("a", (61, 83)), ("b", (50, 40))):
        pair = np.asarray(Image.open(out / f"{stem}.png"))
        assert pair.shape == (h, 2 * w, 3)
        # the labels written: the prediction half's colours mapped back to classes
        match = (pair[:, w:, None, :] == colors[None, None, :, :]).all(-1)
        assert (match.sum(-1) == 1).all()
        labels = match.argmax(-1)
        with np.load(out / f"{stem}_probs.npz") as npz:
            assert list(npz.files) == ["probs"]
            probs = npz["probs"]
        assert probs.dtype == np.float16 and probs.shape == (NUM_CLASS, h, w)
        assert np.abs(probs.astype(np.float64).sum(0) - 1).max() <= F16_SUM_TOL
        # argmax = the labels written, except where float16 made the top two equal
        top = probs.max(0)
        tied = (probs == top).sum(0) > 1
        ties += int(tied.sum())
        assert np.array_equal(probs.argmax(0)[~tied], labels[~tied])
        assert (np.take_along_axis(probs, labels[None], 0)[0] == top).all()
        with Image.open(out / f"{stem}_confidence.png") as im:
            assert im.mode == "L" and im.size == (w, h)
            conf = np.asarray(im).astype(int)
        # 255 = 1.0; from float32 probabilities, so within one level of float16's
        assert np.abs(conf - confidence_uint8(top.astype(np.float32)).astype(int)).max() <= 1
        assert conf.min() >= np.floor(255 / NUM_CLASS)
    assert ties <= 0.01 * (61 * 83 + 50 * 40)  # untrained weights: close probabilities


def test_companion_names_never_clash(tmp_path):
    outputs = [str(tmp_path / "a.png"), str(tmp_path / "a_confidence.png")]
    taken = {os.path.abspath(p) for p in outputs}
    names = companion_names(outputs, "_confidence.png", taken)
    assert names == [str(tmp_path / "a_confidence_2.png"),
                     str(tmp_path / "a_confidence_confidence.png")]
    assert companion_names(outputs, "_probs.npz", taken) == \
        [str(tmp_path / "a_probs.npz"), str(tmp_path / "a_confidence_probs.npz")]


# ---------------------------------------------------------------- slide vs whole

def test_slide_and_whole_agree_away_from_tile_seams():
    """One scale at the photo's own size (short side = DATASET.imgSizes, a multiple of
    the padding): whole-image and sliding-window labels agree beyond the network's
    receptive field (plus the resize's reach) from every tile edge."""
    from mit_semseg.data.synthetic import make_scene
    from mit_semseg.inference.slide import tile_windows
    net = TinyNet(NUM_CLASS).eval()
    image = np.asarray(make_scene(np.random.default_rng(3), 160, 200)[0])
    pre = Preprocess((160,), 1000, 8)
    window = SlideWindow(crop_size=(96, 96), stride=(64, 64))
    whole = InferenceEngine(None, device="cpu", backend=_Scores(net), preprocess=pre)
    slide = InferenceEngine(None, device="cpu", backend=_Scores(net), preprocess=pre,
                            window=window)
    a, b = whole.predict_image(image), slide.predict_image(image)
    margin = 16  # 15-pixel receptive field, stride 8: one feature column plus the resize
    keep = np.ones(image.shape[:2], bool)
    for axis, size in enumerate(image.shape[:2]):
        for start, end in tile_windows(size, window.crop_size[axis], window.stride[axis]):
            for edge in (start, end):
                if 0 < edge < size:
                    index = [slice(None)] * 2
                    index[axis] = slice(max(0, edge - margin), edge + margin)
                    keep[tuple(index)] = False
    assert keep.sum() > 0.1 * keep.size
    agree = float((a.labels == b.labels)[keep].mean())
    assert agree >= 0.999, agree
    assert len(np.unique(a.labels[keep])) >= 3  # not a trivially uniform map


# ---------------------------------------------------------------- the original's probabilities

LIGHT = [n for n in ("mobilenetv2dilated+c1_deepsup", "resnet18dilated+c1",
                     "resnet18dilated+ppm_deepsup")
         if os.path.exists(os.path.join(PARITY_DIR, n + ".pt"))]


@pytest.mark.parametrize("name", LIGHT)
def test_exact_engine_probabilities_are_the_originals(name):
    """The engine's probabilities (exact path: the original's operations) at the
    original's recorded pixels, to the parity tests' tolerance (tests/models/
    test_parity.py); the default path's within float rounding of them."""
    case = load_case(name)
    enc = ModelBuilder.build_encoder(case["enc_arch"], case["fc_dim"], "", pretrained=False)
    dec = ModelBuilder.build_decoder(case["dec_arch"], case["fc_dim"], case["num_class"], "",
                                     use_softmax=True)
    enc.load_state_dict(rule_state_dict(case["encoder_keys"]))
    dec.load_state_dict(rule_state_dict(case["decoder_keys"]))
    x = case["input"]
    size = tuple(x.shape[2:])
    exact = InferenceEngine(SegmentationNetwork(enc, dec), device="cpu", exact=True)
    pred = exact.predict([x], size, return_probs=True, return_confidence=True)
    probs = pred.probs
    argmax = probs.argmax(0).to(torch.int16)
    ref = case["argmax"].reshape(argmax.shape)
    decided = case["argmax_gap"].reshape(argmax.shape) >= 1e-4 if "argmax_gap" in case \
        else torch.ones_like(ref, dtype=torch.bool)
    assert torch.equal(argmax[decided], ref[decided])
    assert np.array_equal(pred.labels, probs.argmax(0).numpy())
    logp = torch.log(probs.clamp_min(1e-30)).permute(1, 2, 0).reshape(-1, probs.shape[0])
    at, want = case["logprob_pixel_index"], case["logprob_at_pixels"]
    err = ((logp[at] - want).abs() / want.abs().clamp_min(1.0)).max().item()
    assert err <= 1e-4, err
    assert np.array_equal(pred.confidence, probs.max(0).values.numpy())
    fast = InferenceEngine(SegmentationNetwork(enc, dec), device="cpu").predict([x], size, return_probs=True,
                                                           return_confidence=True)
    assert torch.allclose(fast.probs, probs, rtol=0, atol=1e-5)
    np.testing.assert_allclose(fast.confidence, pred.confidence, rtol=0, atol=1e-5)
