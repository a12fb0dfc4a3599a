"""The benchmark on timm: encoders: --pairs / --cfg accept timm: names and the presets
(their MODEL.encoder_options travel with the pair), training labels follow each pair's
score stride. No timing assertions."""
from __future__ import annotations

import dataclasses
import json
import os
import sys

import pytest

from mit_semseg import benchmark as B
from mit_semseg.benchmark.harness import Pair
from mit_semseg.commands.benchmark import main as benchmark_main

from _support import ROOT

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _timm import timm_or_skip  # noqa: E402

PRESETS = [os.path.join(ROOT, "config", f"ade20k-{n}-upernet.yaml")
           for n in ("convnext_tiny", "swin_tiny")]


def test_presets_give_pairs_options_and_training_pairs():
    o = B.resolve_options(B.BenchmarkOptions(cfg=PRESETS, device="cpu", precisions=["fp32"],
                                             sections=["peak"]))
    convnext = "timm:convnext_tiny.fb_in1k+upernet"
    swin = "timm:swin_tiny_patch4_window7_224.ms_in1k+upernet"
    assert o.single_pairs == o.multi_pairs == o.train_pairs == [convnext, swin]
    assert o.pair_options[convnext] == {"drop_path_rate": 0.4, "feature_norm": True}
    assert (o.scales, o.max_size, o.padding) == ((512,), 2048, 32)
    # --quick keeps the configs' models
    quick = B.resolve_options(dataclasses.replace(o, preset="quick", pairs=None,
                                                  single_pairs=None, multi_pairs=None,
                                                  train_pairs=None))
    assert quick.single_pairs == [convnext, swin] and quick.train_pairs == [convnext, swin]


def test_timm_names_are_checked_and_the_original_cannot_run_them():
    base = B.BenchmarkOptions(device="cpu", precisions=["fp32"], sections=["single"])
    ok = B.resolve_options(dataclasses.replace(base, pairs=["timm:convnext_atto+upernet_lite"]))
    assert ok.single_pairs == ["timm:convnext_atto+upernet_lite"]
    with pytest.raises(B.BenchmarkError, match="original's encoders only"):
        B.resolve_options(dataclasses.replace(base, pairs=["timm:convnext_atto+c1"],
                                              compare_original=sys.executable))
    with pytest.raises(B.BenchmarkError, match="unknown encoder 'vgg16'"):
        B.resolve_options(dataclasses.replace(base, pairs=["vgg16+c1"]))


@pytest.mark.timm
def test_pairs_build_with_options_and_know_their_stride(tmp_path):
    timm_or_skip()
    upernet = Pair("timm:convnext_atto+upernet_lite", 5, str(tmp_path), {"feature_norm": True})
    assert upernet.label_stride() == 4 and upernet.fc_dim == 0
    net = upernet.build()
    assert net.encoder.norms is not None
    assert os.path.isfile(upernet.enc_weights) and ":" not in os.path.basename(upernet.enc_weights)
    assert Pair("timm:convnext_atto+c1", 5, str(tmp_path)).label_stride() == 32
    assert Pair("resnet18dilated+c1", 5, str(tmp_path)).label_stride() == 8


@pytest.mark.timm
def test_benchmark_runs_a_timm_pair(tmp_path, capsys):
    timm_or_skip()
    out = tmp_path / "bench.json"
    assert benchmark_main(["--quick", "--quiet", "--json", str(out), "--gpus", "cpu",
                           "--pairs", "timm:convnext_atto+upernet_lite",
                           "--train-pairs", "timm:convnext_atto+upernet_lite",
                           "--sections", "single,train", "--precisions", "fp32"]) == 0
    data = json.loads(out.read_text())
    row = data["single_scale"][0]
    assert row["pair"] == "timm:convnext_atto+upernet_lite"
    assert row["methods"]["default"]["agreement_vs_plain"] >= 0.999
    train = data["training"][0]
    assert train["pair"] == "timm:convnext_atto+upernet_lite"
    assert train["methods"]["default"]["first_rel_loss_diff_vs_exact"] < 1e-4
