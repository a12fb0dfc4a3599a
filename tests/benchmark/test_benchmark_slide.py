"""The benchmark's opt-in ``slide`` section runs end to end (tiny mode). No timing
assertions."""
from __future__ import annotations

import json

from mit_semseg.commands.benchmark import build_parser, main


def test_slide_section_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--quick", "--quiet", "--sections", "slide", "--slide-photo", "100x150",
            "--json", str(out)]) == 0
    s = json.loads(out.read_text())["slide"]
    assert s["pair"] == "resnet18dilated+c1_deepsup" and s["photo"] == [100, 150]
    assert s["crop"] == [64, 64] and s["stride"] == [43, 43] and s["tiles"] == 2 * 3
    net, noop = s["network"], s["noop"]
    assert 0 < net["network_wall_s"] < net["wall_s"]
    assert net["stitch_wall_s"] > 0 and noop["wall_s"] > 0 and noop["cpu_s"] > 0
    assert net["peak_mb"] > 0 and len(noop["runs"]) == 1
    text = capsys.readouterr().out
    assert "Slide mode" in text and "stitching overhead" in text


def test_slide_section_is_opt_in_and_takes_its_options():
    args = build_parser().parse_args(["--slide-photo", "3000x4000", "--slide-crop", "256",
                                        "--slide-flip"])
    assert args.slide_photo == (3000, 4000) and args.slide_crop == (256, 256) and args.slide_flip
    from mit_semseg.benchmark.options import DEFAULT_SECTIONS, SECTIONS
    assert "slide" in SECTIONS and "slide" not in DEFAULT_SECTIONS
