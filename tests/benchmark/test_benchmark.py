"""The benchmark command runs end to end (tiny mode) and its harness measures
the right things. No timing assertions."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn

from mit_semseg import benchmark as B
from mit_semseg.benchmark import testpy
from mit_semseg.benchmark.harness import Bench
from mit_semseg.commands.benchmark import main as benchmark_main

from _support import ROOT

TOOLS = os.path.join(ROOT, "tools")


def _tool(name):
    """A module of the repository's tools/ folder (developer tools, not installed)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"tools_{name}", os.path.join(TOOLS, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


original_worker = _tool("original_worker")


def test_quick_benchmark_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    assert benchmark_main(["--quick", "--quiet", "--json", str(out)]) == 0
    assert torch.get_num_threads() == threads  # restored
    data = results = json.loads(out.read_text())
    assert data["machine"]["device"] == "cpu"
    assert isinstance(data["machine"]["fused_conv_exact"], bool)
    assert isinstance(data["machine"]["banding_exact"], bool)
    assert data["matmul_peak_gflops"]["fp32"] > 0
    for section in ("single_scale", "multi_scale"):
        row = data[section][0]
        assert row["pair"] == "resnet18dilated+c1_deepsup" and row["gflops"] > 0
        methods = row["methods"]
        assert {"plain", "exact", "default"} <= set(methods) and row["reference"] == "plain"
        # the inference copy's scores differ in the last bits (by CPU): ties may flip
        assert methods["default"]["agreement_vs_plain"] >= 0.999
        if data["machine"]["banding_exact"]:
            assert methods["exact"]["agreement_vs_plain"] == 1.0
        assert methods["default"]["img_per_s"]["median"] > 0
        assert methods["default"]["share_of_peak"] > 0
        for name, entry in methods.items():  # reduced precisions: vs fp32 default and the ref
            if name.startswith("default-"):
                assert 0.9 < entry["agreement_vs_default_fp32"] <= 1.0
                assert 0.9 < entry["agreement_vs_plain"] <= 1.0
    train = data["training"][0]
    assert train["reference"] == "exact"
    assert train["methods"]["default"]["first_rel_loss_diff_vs_exact"] < 1e-5
    assert len(train["methods"]["exact"]["losses"]) == len(train["methods"]["default"]["losses"])
    assert data["data"]["loaders"]["0"]["batches_per_s"] > 0
    assert data["metrics"]["equal_results"] is True
    text = capsys.readouterr().out
    assert "Single-scale inference" in text and "Training step" in text
    assert "fused_conv_exact" in text and "banding_exact" in text
    assert "testpy" not in data  # opt-in
    assert results["settings"]["preset"] == "quick"


def test_count_gflops_counts_conv_and_linear_macs():
    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)

        def forward(self, x, return_feature_maps=False):
            return [self.dw(self.conv(x))]

    class Dec(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 5)

        def logits(self, feats):
            return self.fc(feats[-1].mean((2, 3)))

    gflops = B.count_gflops(Enc(), Dec(), [torch.randn(1, 3, 10, 12)])
    macs = 8 * 10 * 12 * 3 * 9 + 8 * 10 * 12 * 1 * 9 + 5 * 8
    assert abs(gflops - 2 * macs / 1e9) < 1e-12


def test_count_gflops_of_the_factorized_ppm_head():
    """A PPM head through pyramid_conv: its 3x3 convolution on the top map's
    channels only, plus the small per-branch products."""
    from mit_semseg.models.decoders import PPM

    class Enc(nn.Module):
        def forward(self, x, return_feature_maps=False):
            return [x]

    dec = PPM(num_class=3, fc_dim=8).eval()
    x = torch.randn(1, 8, 10, 12)
    plain = B.count_gflops(Enc(), dec, [x])
    factorized = B.count_gflops(Enc(), dec, [x], factorized=True)
    head = 512 * 10 * 12 * (8 + 4 * 512) * 9
    branches = sum(512 * 8 * s * s for s in (1, 2, 3, 6))
    classes = 3 * 10 * 12 * 512
    assert abs(plain - 2 * (head + branches + classes) / 1e9) < 1e-9
    small = sum(512 * 9 * 512 * s * s + 512 * 10 * 3 * s * 3 * s + 512 * 10 * 12 * 3 * s
                for s in (1, 2, 3, 6))
    top = 512 * 10 * 12 * 8 * 9
    assert abs(factorized - 2 * (top + small + branches + classes) / 1e9) < 1e-9
    assert not dec.factorized_pyramid  # counted on a copy


def test_worker_commands_in_process(tmp_path):
    """The worker protocol, served by this package (same model API as the original)."""
    from mit_semseg.models import ModelBuilder
    enc = ModelBuilder.build_encoder("resnet18dilated", 512, pretrained=False)
    dec = ModelBuilder.build_decoder("c1", 512, 7)
    paths = {}
    for name, net in (("enc", enc), ("dec", dec)):
        paths[name] = str(tmp_path / f"{name}.pth")
        torch.save({k: B.rule_tensor(k, v.shape) for k, v in net.state_dict().items()},
                   paths[name])
    inputs = str(tmp_path / "inputs.pt")
    torch.save([torch.randn(1, 3, 32, 40), torch.randn(1, 3, 40, 48)], inputs)
    state: dict = {}
    common = dict(enc="resnet18dilated", dec="c1", fc_dim=512, num_class=7,
                  enc_weights=paths["enc"], dec_weights=paths["dec"])
    serve = original_worker._worker_command
    assert serve(dict(cmd="load_infer", key="k", inputs=inputs, **common), state)["ok"]
    labels_out = str(tmp_path / "labels.pt")
    rec = serve(dict(cmd="infer", key="k", size=[30, 50], num_class=7,
                                 labels_out=labels_out), state)
    assert rec["total"] >= rec["model"] > 0 and rec["post"] >= 0
    saved = torch.load(labels_out, weights_only=True)
    labels, gap = saved["labels"], saved["gap"]
    assert labels.shape == gap.shape == (30, 50) and labels.dtype == torch.int64
    assert (gap >= 0).all()
    batches = str(tmp_path / "batches.pt")
    torch.save([{"img_data": torch.randn(2, 3, 32, 32),
                 "seg_label": torch.randint(-1, 7, (2, 4, 4))}], batches)
    serve(dict(cmd="load_train", key="t", deep_sup_scale=None, lr=0.01,
                           momentum=0.9, weight_decay=1e-4, batches=batches, **common), state)
    step = serve(dict(cmd="train_step", key="t", index=0, seed=1), state)
    assert np.isfinite(step["loss"]) and step["time"] > 0
    assert serve(dict(cmd="free", key="t"), state)["ok"] and "t" not in state


def test_original_procedure_matches_engine_labels():
    from mit_semseg.inference import InferenceEngine
    from mit_semseg.models import ModelBuilder, SegmentationNetwork
    torch.manual_seed(0)
    enc = ModelBuilder.build_encoder("resnet18dilated", 512, pretrained=False).eval()
    dec = ModelBuilder.build_decoder("c1", 512, 9, use_softmax=True).eval()
    imgs = [torch.randn(1, 3, 48, 64), torch.randn(1, 3, 64, 80)]
    labels, times = B.original_inference(enc, dec, imgs, (50, 70), 9, torch.device("cpu"))
    ref = InferenceEngine(SegmentationNetwork(enc, dec), device="cpu",
                          band_bytes=0).predict(imgs, (50, 70)).labels
    assert (labels.numpy() == ref).mean() > 0.999  # equal up to float ties
    assert set(times) == {"total", "model", "post"}


def test_memory_probe_reports_peak():
    import mmap
    with B.MemoryProbe("cpu") as mem:
        buf = mmap.mmap(-1, 32 * 2 ** 20)  # fresh pages, whatever the allocator holds
        for i in range(0, len(buf), 4096):
            buf[i] = 1
        buf.close()
    assert mem.peak_mb is not None and mem.peak_mb > 0
    if os.path.exists("/proc/self/clear_refs"):
        assert mem.delta_mb is not None and mem.delta_mb >= 16


def test_old_method_names_are_refused_with_the_new_name(capsys):
    # a package error (BenchmarkError): one line on stderr, exit status 1
    assert benchmark_main(["--quick", "--methods", "plain,fast"]) == 1
    assert capsys.readouterr().err == "error: method 'fast' is now 'default'\n"
    assert benchmark_main(["--quick", "--methods", "turbo"]) == 1
    assert "expected some of plain,exact,default" in capsys.readouterr().err


def test_worker_script_imports_no_package(tmp_path):
    """The original's interpreter runs original_worker.py as a script (-P, no
    package): it must start without this package and answer the protocol."""
    import subprocess
    import sys
    fake = tmp_path / "mit_semseg"  # stands in for the original's package
    fake.mkdir()
    (fake / "__init__.py").write_text("__version__ = 'stand-in'\n")
    script = os.path.abspath(original_worker.__file__)
    proc = subprocess.run([sys.executable, "-P", "-c",
                           f"import sys; sys.path.insert(0, {str(tmp_path)!r}); "
                           f"sys.argv = [{script!r}, '--worker']; "
                           f"import runpy; runpy.run_path({script!r}, run_name='__main__'); "
                           "assert not any(m.startswith('mit_semseg.') for m in sys.modules)"],
                          input='{"cmd": "hello"}\n{"cmd": "quit"}\n', capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    hello = json.loads(proc.stdout.splitlines()[0])
    assert hello["version"] == "stand-in" and hello["torch"] == torch.__version__


def test_testpy_section_times_default_and_exact(tmp_path):
    """test.py as whole processes: default vs TEST.exact agree on every pixel of
    the output PNGs; an original test.py that fails is reported, not fatal."""
    repo = tmp_path / "original"
    repo.mkdir()
    (repo / "test.py").write_text("raise SystemExit('needs CUDA')\n")
    options = B.resolve_options(B.BenchmarkOptions(
        preset="quick", sections=["testpy"], testpy_images=1, warmup=0, quiet=True,
        scales=(40,), compare_original=sys.executable, original_repo=str(repo)))
    bench = Bench(options)
    try:
        testpy.run_testpy(bench)
    finally:
        import shutil
        shutil.rmtree(bench.workdir, ignore_errors=True)
    t = bench.results["testpy"]
    assert [(r["mode"], r["imgSizes"]) for r in t["rows"]] == [("single", [40])]
    for row in t["rows"]:
        assert row["reference"] == "exact" and set(row["methods"]) == {"exact", "default"}
        default = row["methods"]["default"]
        assert default["agreement_vs_exact"] == {"all": 1.0, "min_image": 1.0}
        assert default["seconds"]["median"] > 0 and default["speedup"] > 0
    assert len(t["notes"]) == 1 and "needs CUDA" in t["notes"][0]
    text = B.format_report(bench.results)
    assert "test.py, whole process" in text and "original test.py failed" in text


def test_png_agreement_compares_the_prediction_half():
    a = {"x.png": np.zeros((2, 4, 3), np.uint8)}
    b = {"x.png": a["x.png"].copy()}
    b["x.png"][0, 0, 1] = 9
    assert testpy._png_agreement(a, b) == {"all": 0.875, "min_image": 0.875}
    assert testpy._png_agreement(a, {}) is None


def test_cpu_shim_runs_a_cuda_script_on_the_cpu(tmp_path):
    """What the original's test.py needs on a CPU-only machine: CUDA calls as
    no-ops, torchvision's Normalize, collections.Mapping (Python >= 3.10)."""
    import subprocess
    script = tmp_path / "cuda_script.py"
    script.write_text(
        "import collections, sys, torch\n"
        "from torchvision import transforms\n"
        "torch.cuda.set_device(0)\n"
        "x = torch.ones(3, 2, 2).cuda()\n"
        "net = torch.nn.Conv2d(3, 1, 1).cuda()\n"
        "y = transforms.Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])(x)\n"
        "assert isinstance({}, collections.Mapping) and float(y.max()) == 2.0\n"
        "print('ran', sys.argv[1:])\n")
    shim = os.path.join(TOOLS, "cpu_shim.py")
    proc = subprocess.run([sys.executable, shim, str(script), "--gpu", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ran ['--gpu', '0']" in proc.stdout


def test_quick_benchmark_of_a_segformer_preset(tmp_path):
    """A decoder without the original's conv_last (the class-layer timer) whose scores
    come at stride 4 (training labels at the scores' size), from its config file."""
    out = tmp_path / "bench.json"
    cfg = os.path.join(ROOT, "config", "ade20k-segformer_b0.yaml")
    assert benchmark_main(["--quick", "--quiet", "--cfg", cfg, "--sections", "single,train",
                           "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["single_scale"][0]["pair"] == "mit_b0+segformer_head"
    assert data["single_scale"][0]["methods"]["plain"]["model_ms"]["median"] > 0
    assert all(np.isfinite(data["training"][0]["methods"]["exact"]["losses"]))
    pair = B.harness.Pair("mit_b0+segformer_head", 5, str(tmp_path))
    assert pair.label_stride() == 4 and pair.score_side(70) == 18
