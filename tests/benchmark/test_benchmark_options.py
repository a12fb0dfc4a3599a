"""The benchmark's typed options: the command's flags are BenchmarkOptions'
fields with the same defaults, and resolve_options decides presets, config
files and precisions and refuses what cannot run, before anything is measured."""
from __future__ import annotations

import dataclasses
import os

import pytest

from mit_semseg.benchmark import BenchmarkError, BenchmarkOptions, resolve_options
from mit_semseg.commands.benchmark import build_parser

from _support import ROOT


def test_flags_are_the_options_fields_with_their_defaults():
    args = build_parser().parse_args([])
    assert BenchmarkOptions(**vars(args)) == BenchmarkOptions()
    args = build_parser().parse_args(["--quick", "--gpus", "cpu", "--photo", "30x40",
                                      "--data-workers", "0,1", "--slide-crop", "256"])
    options = BenchmarkOptions(**vars(args))
    assert (options.preset, options.device, options.photo) == ("quick", "cpu", (30, 40))
    assert options.data_workers == [0, 1] and options.slide_crop == (256, 256)


def test_quick_preset_fills_what_was_left_at_the_default():
    given = BenchmarkOptions(preset="quick", size=96, device="cpu", precisions=["fp32"])
    o = resolve_options(given)
    assert o.size == 96  # given: kept
    assert (o.photo, o.scales, o.runs, o.threads) == ((48, 64), (32, 48), 1, 1)
    assert o.single_pairs == o.multi_pairs == o.train_pairs == ["resnet18dilated+c1_deepsup"]
    assert o.sections == ["peak", "single", "multi", "train", "data", "metrics"]
    assert given.sections is None and given.photo == (480, 640)  # a copy; the input unchanged
    assert resolve_options(o) == o


def test_config_files_give_pairs_classes_and_sizes():
    cfg = os.path.join(ROOT, "config", "ade20k-mobilenetv2dilated-c1_deepsup.yaml")
    o = resolve_options(BenchmarkOptions(cfg=[cfg], device="cpu", precisions=["fp32"]))
    assert o.single_pairs == ["mobilenetv2dilated+c1_deepsup"]
    assert (o.num_class, o.scales, o.max_size, o.padding) == \
        (150, (300, 375, 450, 525, 600), 1000, 8)
    targets = resolve_options(BenchmarkOptions(preset="targets", device="cpu"))
    assert "testpy" in targets.sections and len(targets.single_pairs) == 4
    assert targets.precisions[0] == "fp32"


@pytest.mark.parametrize("change,message", [
    (dict(sections=["peak", "warp"]), "unknown section 'warp'"),
    (dict(precisions=["fp8"]), "unknown precision 'fp8'"),
    (dict(methods=["engine"]), "method 'engine' is now 'exact'"),
    (dict(pairs=["resnet50dilated"]), "must be ENCODER\\+DECODER"),
    (dict(train_pairs=["vgg16+c1"], sections=["train"]), "unknown encoder 'vgg16'"),
    (dict(preset="fastest"), "unknown preset 'fastest'"),
])
def test_what_cannot_run_is_refused_up_front(change, message):
    options = dataclasses.replace(BenchmarkOptions(device="cpu"), **change)
    with pytest.raises(BenchmarkError, match=message):
        resolve_options(options)


def test_a_pair_of_a_section_not_run_is_not_checked():
    o = resolve_options(BenchmarkOptions(sections=["metrics"], train_pairs=["vgg16+c1"],
                                         device="cpu", precisions=["fp32"]))
    assert o.train_pairs == ["vgg16+c1"]


def test_config_sizes_unless_flags_or_quick_set_them():
    preset = os.path.join(ROOT, "config", "ade20k-segformer_b0.yaml")
    from_cfg = resolve_options(BenchmarkOptions(cfg=[preset]))
    assert from_cfg.pairs == ["mit_b0+segformer_head"]
    assert (from_cfg.scales, from_cfg.max_size, from_cfg.padding) == ((512,), 2048, 32)
    flags = resolve_options(BenchmarkOptions(cfg=[preset], scales=(300, 375, 450, 525, 600),
                                             padding=8))  # the defaults' values, given
    assert (flags.scales, flags.max_size, flags.padding) == ((300, 375, 450, 525, 600), 2048, 8)
    plain = resolve_options(BenchmarkOptions())
    assert (plain.scales, plain.max_size, plain.padding) == ((300, 375, 450, 525, 600), 1000, 8)
    quick = resolve_options(BenchmarkOptions(cfg=[preset], preset="quick"))
    assert quick.scales == (32, 48) and quick.pairs == ["mit_b0+segformer_head"]


def test_configs_of_the_same_networks_stay_two_pairs_with_their_options():
    paths = [os.path.join(ROOT, "config", f"ade20k-dinov2_vits14-{k}.yaml") for k in ("linear", "ms")]
    o = resolve_options(BenchmarkOptions(cfg=paths))
    assert o.pairs == ["dinov2_vits14+dinov2_linear",
                       "dinov2_vits14+dinov2_linear@ade20k-dinov2_vits14-ms"]
    assert o.pair_options[o.pairs[0]]["layers"] == 1 and o.pair_options[o.pairs[1]]["layers"] == 4
    from mit_semseg.benchmark.harness import Pair
    pair = Pair(o.pairs[1], 5, "unused", o.pair_options[o.pairs[1]])
    assert (pair.enc_arch, pair.dec_arch) == ("dinov2_vits14", "dinov2_linear")
    assert pair.name.endswith("@ade20k-dinov2_vits14-ms")
