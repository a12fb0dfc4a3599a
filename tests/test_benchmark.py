"""The benchmark command runs end to end (tiny mode) and its harness measures
the right things. No timing assertions."""
from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn as nn

from mit_semseg import benchmark as B


def test_quick_benchmark_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    results = B.main(["--quick", "--quiet", "--json", str(out)])
    assert torch.get_num_threads() == threads  # restored
    data = json.loads(out.read_text())
    assert data["machine"]["device"] == "cpu"
    assert data["matmul_peak_gflops"]["fp32"] > 0
    for section in ("single_scale", "multi_scale"):
        row = data[section][0]
        assert row["pair"] == "resnet18dilated+c1_deepsup" and row["gflops"] > 0
        methods = row["methods"]
        assert {"plain", "engine", "fast"} <= set(methods)
        assert methods["fast"]["agreement_vs_plain"] == 1.0
        assert methods["engine"]["agreement_vs_plain"] == 1.0
        assert methods["fast"]["img_per_s"]["median"] > 0
        assert methods["fast"]["share_of_peak"] > 0
    train = data["training"][0]["methods"]
    assert train["fast"]["first_rel_loss_diff_vs_plain"] < 1e-5
    assert len(train["plain"]["losses"]) == len(train["fast"]["losses"])
    assert data["data"]["loaders"]["0"]["batches_per_s"] > 0
    assert data["metrics"]["equal_results"] is True
    text = capsys.readouterr().out
    assert "Single-scale inference" in text and "Training step" in text
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
    assert B._worker_command(dict(cmd="load_infer", key="k", inputs=inputs, **common), state)["ok"]
    labels_out = str(tmp_path / "labels.pt")
    rec = B._worker_command(dict(cmd="infer", key="k", size=[30, 50], num_class=7,
                                 labels_out=labels_out), state)
    assert rec["total"] >= rec["model"] > 0 and rec["post"] >= 0
    saved = torch.load(labels_out, weights_only=True)
    labels, gap = saved["labels"], saved["gap"]
    assert labels.shape == gap.shape == (30, 50) and labels.dtype == torch.int64
    assert (gap >= 0).all()
    batches = str(tmp_path / "batches.pt")
    torch.save([{"img_data": torch.randn(2, 3, 32, 32),
                 "seg_label": torch.randint(-1, 7, (2, 4, 4))}], batches)
    B._worker_command(dict(cmd="load_train", key="t", deep_sup_scale=None, lr=0.01,
                           momentum=0.9, weight_decay=1e-4, batches=batches, **common), state)
    step = B._worker_command(dict(cmd="train_step", key="t", index=0, seed=1), state)
    assert np.isfinite(step["loss"]) and step["time"] > 0
    assert B._worker_command(dict(cmd="free", key="t"), state)["ok"] and "t" not in state


def test_original_procedure_matches_engine_labels():
    from mit_semseg.inference import InferenceEngine
    from mit_semseg.models import ModelBuilder
    torch.manual_seed(0)
    enc = ModelBuilder.build_encoder("resnet18dilated", 512, pretrained=False).eval()
    dec = ModelBuilder.build_decoder("c1", 512, 9, use_softmax=True).eval()
    imgs = [torch.randn(1, 3, 48, 64), torch.randn(1, 3, 64, 80)]
    labels, times = B.original_inference(enc, dec, imgs, (50, 70), 9, torch.device("cpu"))
    ref = InferenceEngine(enc, dec, device="cpu", band_bytes=0).predict(imgs, (50, 70)).labels
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
