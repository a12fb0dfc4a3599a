"""DINOv2 encoders (timm) and the linear heads. The timm tests build tiny ViTs (no
download) and are skipped where timm is not installed."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from mit_semseg.models.timm_encoder import TimmNotInstalledError
from mit_semseg.models.dinov2 import crop_back
from mit_semseg.models.network import SegmentationNetwork, build_decoder, build_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

HAVE_TIMM = importlib.util.find_spec("timm") is not None
_skip_without_timm = pytest.mark.skipif(not HAVE_TIMM, reason="timm is not installed (the [timm] extra)")


def needs_timm(test):
    """Skipped without timm; marked ``timm`` so .ci/run's timm stage runs it."""
    return pytest.mark.timm(_skip_without_timm(test))

# a ViT-S/14 with DINOv2's layout, cut down for a test
TINY = {"depth": 4, "embed_dim": 24, "num_heads": 2, "img_size": 28}


def _encoder(**options):
    torch.manual_seed(0)
    return build_encoder("dinov2_vits14", options={"model_args": TINY, **options})


@needs_timm
def test_patch_token_maps_of_the_last_layers_with_class_tokens():
    enc = _encoder()
    maps = enc(torch.randn(2, 3, 56, 70), return_feature_maps=True)
    assert enc.out_channels == (24,) and [m.shape for m in maps] == [(2, 24, 4, 5)]
    enc = _encoder(layers=4, cls_token=True)
    maps = enc(torch.randn(2, 3, 56, 70), return_feature_maps=True)
    assert enc.out_channels == (48,) * 4 and all(m.shape == (2, 48, 4, 5) for m in maps)
    # the class token half is constant over the map
    cls = maps[0][:, 24:]
    assert torch.equal(cls, cls[:, :, :1, :1].expand_as(cls))
    assert len(enc(torch.randn(1, 3, 28, 28))) == 1


@needs_timm
def test_maps_equal_timms_own_model_on_the_same_weights(capsys):
    import timm
    enc = _encoder(layers=4, cls_token=True).eval()
    reference = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0,
                                  dynamic_img_size=True, **TINY).eval()
    reference.load_state_dict({k[len("vit."):]: v for k, v in enc.state_dict().items()})
    x = torch.randn(2, 3, 42, 70)
    with torch.no_grad():
        ours = enc(x, return_feature_maps=True)
        # DINOv2's evaluation interface: the last 4 blocks, normed, with class tokens
        theirs = reference.get_intermediate_layers(x, n=4, reshape=True,
                                                   return_prefix_tokens=True, norm=True)
    diff = 0.0
    for mine, (patches, prefix) in zip(ours, theirs):
        diff = max(diff, float((mine[:, :24] - patches).abs().max()),
                   float((mine[:, 24:, 0, 0] - prefix[:, 0]).abs().max()))
    with capsys.disabled():
        print(f"\n[dinov2 vs timm] max |diff| of the 4 maps + class tokens: {diff:.2e}")
    assert diff == 0.0


def test_crop_back_puts_each_cell_over_its_part_of_the_unpadded_input():
    # a map whose value is the padded input's row/column at each token centre
    h, w, patch = 5, 6, 14
    ys = (torch.arange(h, dtype=torch.float32) * patch + patch / 2).view(1, 1, h, 1)
    xs = (torch.arange(w, dtype=torch.float32) * patch + patch / 2).view(1, 1, 1, w)
    maps = torch.cat([ys.expand(1, 1, h, w), xs.expand(1, 1, h, w)], dim=1)
    height, width = 62, 80  # padded to 70 x 84
    out = crop_back(maps, height, width, patch)
    assert out.shape == maps.shape
    want_y = (torch.arange(h) + 0.5) * height / h
    want_x = (torch.arange(w) + 0.5) * width / w
    # inside the outermost token centres bilinear sampling is exact for this linear map
    inner_y = (want_y >= patch / 2) & (want_y <= (h - 0.5) * patch)
    inner_x = (want_x >= patch / 2) & (want_x <= (w - 0.5) * patch)
    assert torch.allclose(out[0, 0, inner_y, 0], want_y[inner_y], atol=1e-4)
    assert torch.allclose(out[0, 1, 0, inner_x], want_x[inner_x], atol=1e-4)
    assert crop_back(maps, 70, 84, patch) is maps  # nothing padded: untouched


@needs_timm
def test_any_input_size_is_padded_and_cropped_back():
    enc = _encoder().eval()
    x = torch.randn(1, 3, 62, 80)
    with torch.no_grad():
        out = enc(x)[0]
        padded = enc(torch.nn.functional.pad(x, (0, 4, 0, 8)))[0]  # what the encoder pads to
    assert out.shape == padded.shape == (1, 24, 5, 6)
    assert torch.allclose(out, crop_back(padded, 62, 80), atol=1e-6)


@needs_timm
def test_linear_heads_train_on_the_frozen_maps():
    enc = _encoder(layers=2, cls_token=True)
    for arch, up in (("linear", 1), ("dinov2_linear", 7)):
        dec = build_decoder(arch, num_class=3, fc_dim=0, in_channels=enc.out_channels)
        assert dec.bn.num_features == 96 and dec.class_layers == ("conv_seg",)
        net = SegmentationNetwork(enc, dec)
        scores = net(torch.randn(2, 3, 56, 42))
        assert scores.shape == (2, 3, 4 * up, 3 * up)
        scores.sum().backward()
        assert dec.conv_seg.weight.grad is not None


@pytest.mark.timm
def test_unknown_options_and_layer_counts_are_errors():
    if HAVE_TIMM:
        with pytest.raises(ValueError, match=r"\['depth'\] are not options of dinov2_vits14"):
            build_encoder("dinov2_vits14", options={"depth": 2})
        with pytest.raises(ValueError, match="layers must be 1..4"):
            _encoder(layers=5)
    else:
        with pytest.raises(TimmNotInstalledError, match=r"DINOv2 encoders need the timm package.*\.\[timm\]"):
            build_encoder("dinov2_vits14")
