"""Training (mit_semseg.train and train.py) on tiny synthetic data, CPU only.

A MobileNetV2-dilated + C1-deepsup model on 32-pixel images keeps every run to
a few seconds; the multi-process test uses gloo.
"""
from __future__ import annotations

import os
import shutil

import pytest
import torch
import torch.nn as nn

import mit_semseg.training as T
from _support import assert_same_epoch_weights, crash_after_checkpoint, torchrun_train
from mit_semseg.checkpoints.files import CheckpointError, load_file
from mit_semseg.training.state import load_training_state
from mit_semseg.config import load_cfg
from mit_semseg.errors import MitSemsegError
from mit_semseg.data.datasets import TrainDataset
from mit_semseg.nn import SynchronizedBatchNorm2d
from mit_semseg.models import ModelBuilder, SegmentationModule, SegmentationNetwork
from mit_semseg.data.synthetic import make_synthetic_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_CLASS = 4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    make_synthetic_dataset(root, num_train=8, num_val=1, size_range=(32, 56), num_class=NUM_CLASS)
    return root


def _opts(data_root: str, out_dir, *extra) -> list[str]:
    return ["DATASET.root_dataset", data_root,
            "DATASET.list_train", os.path.join(data_root, "training.odgt"),
            "DATASET.num_class", str(NUM_CLASS), "DATASET.imgSizes", "(32,)",
            "DATASET.imgMaxSize", "64",
            "MODEL.arch_encoder", "mobilenetv2dilated", "MODEL.arch_decoder", "c1_deepsup",
            "MODEL.fc_dim", "320", "MODEL.pretrained", "False",
            "TRAIN.batch_size_per_gpu", "2", "TRAIN.num_epoch", "2", "TRAIN.epoch_iters", "3",
            "TRAIN.workers", "0", "TRAIN.disp_iter", "1", "DIR", str(out_dir), *map(str, extra)]


def _cfg(data_root, out_dir, *extra):
    return load_cfg(None, _opts(data_root, out_dir, *extra))


# Two loader workers, a mid-epoch checkpoint every 2 iterations and precise BN:
# the settings whose resume is hardest to get exactly right.
RESUME_OPTS = ("TRAIN.workers", 2, "TRAIN.checkpoint_every", 2, "TRAIN.precise_bn_iters", 1)


@pytest.fixture(scope="module")
def reference_run(data_root, tmp_path_factory):
    """2 epochs x 3 iterations without interruption."""
    out = tmp_path_factory.mktemp("reference")
    summary = T.main(_cfg(data_root, out, *RESUME_OPTS), "cpu")
    return out, summary




# ----------------------------------------------------------------------------- recipe

def _nets():
    enc = ModelBuilder.build_encoder("mobilenetv2dilated", 320, pretrained=False)
    dec = ModelBuilder.build_decoder("c1_deepsup", 320, NUM_CLASS)
    return enc, dec


def test_optimizers_do_not_decay_biases_and_batchnorm():
    cfg = load_cfg(None, ["TRAIN.lr_encoder", "0.03", "TRAIN.lr_decoder", "0.05"])
    enc, dec = _nets()
    optimizers = T.create_optimizers((enc, dec, nn.NLLLoss()), cfg)
    for net, opt, lr in zip((enc, dec), optimizers, (0.03, 0.05)):
        assert isinstance(opt, torch.optim.SGD)
        decay, no_decay = opt.param_groups
        assert decay["weight_decay"] == cfg.TRAIN.weight_decay == 1e-4
        assert no_decay["weight_decay"] == 0.0
        assert decay["momentum"] == no_decay["momentum"] == cfg.TRAIN.beta1
        assert decay["lr"] == no_decay["lr"] == lr
        decayed, free = set(map(id, decay["params"])), set(map(id, no_decay["params"]))
        assert not decayed & free and len(decayed | free) == len(list(net.parameters()))
        for m in net.modules():
            for name, p in m.named_parameters(recurse=False):
                expect_free = isinstance(m, nn.modules.batchnorm._BatchNorm) or name == "bias"
                assert (id(p) in free) == expect_free, f"{type(m).__name__}.{name}"
        assert any(isinstance(m, nn.Conv2d) and id(m.weight) in decayed for m in net.modules())


def test_poly_learning_rate_per_iteration():
    cfg = load_cfg(None, ["TRAIN.lr_encoder", "0.02", "TRAIN.lr_decoder", "0.01",
                          "TRAIN.epoch_iters", "100", "TRAIN.num_epoch", "4", "TRAIN.lr_pow", "0.9"])
    optimizers = T.create_optimizers(_nets(), cfg)
    for cur_iter in (0, 1, 150, 399):
        lr_enc, lr_dec = T.adjust_learning_rate(optimizers, cur_iter, cfg)
        scale = (1 - cur_iter / 400) ** 0.9
        assert lr_enc == pytest.approx(0.02 * scale, rel=1e-12)
        assert lr_dec == pytest.approx(0.01 * scale, rel=1e-12)
        assert [g["lr"] for g in optimizers[0].param_groups] == [lr_enc, lr_enc]
        assert [g["lr"] for g in optimizers[1].param_groups] == [lr_dec, lr_dec]
    assert T.poly_lr(0.02, 0, 10, 0.9) == 0.02
    assert T.poly_lr(0.02, 12, 10, 0.9) == 0.0  # past the end: 0, never a complex number


# ----------------------------------------------------------------------------- a run

def test_main_writes_the_original_checkpoints(reference_run):
    out, summary = reference_run
    names = sorted(os.listdir(out))
    assert names == sorted(["config.yaml", "log.txt", "metrics.jsonl"] + [f"{kind}_epoch_{n}.pth" for n in (1, 2)
                           for kind in ("encoder", "decoder", "history", "state")])
    # the weights load strictly into freshly built models
    ModelBuilder.build_encoder("mobilenetv2dilated", 320, weights=str(out / "encoder_epoch_2.pth"),
                               pretrained=False)
    ModelBuilder.build_decoder("c1_deepsup", 320, NUM_CLASS, weights=str(out / "decoder_epoch_2.pth"))
    enc, dec = _nets()
    assert load_file(str(out / "encoder_epoch_2.pth")).keys() == enc.state_dict().keys()
    assert load_file(str(out / "decoder_epoch_2.pth")).keys() == dec.state_dict().keys()

    history = load_file(str(out / "history_epoch_2.pth"))
    assert set(history) == {"train"} and set(history["train"]) == {"epoch", "loss", "acc"}
    assert history["train"]["epoch"] == pytest.approx([0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3])
    assert history == summary.history
    assert all(0.0 <= a <= 1.0 for a in history["train"]["acc"])

    state = load_training_state(str(out / "state_epoch_2.pth"))
    assert (state["epoch"], state["iteration"], state["global_iter"]) == (2, 3, 6)
    assert summary.last_checkpoint == str(out / "state_epoch_2.pth")
    cfg = load_cfg(str(out / "config.yaml"))
    assert cfg.DIR == str(out) and cfg.TRAIN.checkpoint_every == 2
    log = (out / "log.txt").read_text()
    assert "Epoch: [2][2/3]" in log and "lr_encoder:" in log and "Training Done!" in log


def test_resume_after_an_epoch_is_exact(reference_run, data_root, tmp_path):
    ref, ref_summary = reference_run
    for kind in ("encoder", "decoder", "history", "state"):
        shutil.copy(ref / f"{kind}_epoch_1.pth", tmp_path)
    summary = T.main(_cfg(data_root, tmp_path, *RESUME_OPTS, "TRAIN.start_epoch", 1), "cpu")
    assert summary.history == ref_summary.history  # per-iteration losses and accuracies
    assert_same_epoch_weights(ref, tmp_path, 2)
    # the optimizer momenta carried over too
    a = load_training_state(str(ref / "state_epoch_2.pth"))["optimizers"]
    b = load_training_state(str(tmp_path / "state_epoch_2.pth"))["optimizers"]
    for net in ("encoder", "decoder"):
        for key, buf in a[net]["state"].items():
            assert torch.equal(buf["momentum_buffer"], b[net]["state"][key]["momentum_buffer"])


def test_resume_mid_epoch_is_exact(reference_run, data_root, tmp_path, monkeypatch):
    ref, ref_summary = reference_run
    with crash_after_checkpoint("state_iter_5.pth"):
        T.main(_cfg(data_root, tmp_path, *RESUME_OPTS), "cpu")
    assert "state_iter_5.pth" in os.listdir(tmp_path)
    assert "state_iter_2.pth" not in os.listdir(tmp_path)  # only the newest is kept

    summary = T.main(_cfg(data_root, tmp_path, *RESUME_OPTS), "cpu", resume="auto")
    assert summary.history == ref_summary.history
    assert_same_epoch_weights(ref, tmp_path, 2)
    assert not [n for n in os.listdir(tmp_path) if n.startswith("state_iter_")]


def test_nan_loss_stops_with_iteration_and_last_checkpoint(data_root, tmp_path, monkeypatch):
    real_forward = T.Trainer.forward
    calls = []

    def nan_on_fifth(run, batches, model=None):
        loss, acc = real_forward(run, batches, model)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 5 else loss), acc

    monkeypatch.setattr(T.Trainer, "forward", nan_on_fifth)
    with pytest.raises(T.NonFiniteLossError) as err:
        T.main(_cfg(data_root, tmp_path), "cpu")
    msg = str(err.value)
    assert "loss is nan at epoch 2, iteration 1/3 (global iteration 4)" in msg
    assert str(tmp_path / "state_epoch_1.pth") in msg
    assert os.path.isfile(tmp_path / "encoder_epoch_1.pth")
    assert not os.path.exists(tmp_path / "encoder_epoch_2.pth")


def test_precise_bn_averages_the_batch_statistics(data_root, tmp_path):
    cfg = _cfg(data_root, tmp_path)
    enc, dec = _nets()
    module = SegmentationModule(enc, dec, nn.NLLLoss(ignore_index=-1), 0.4).eval()
    dataset = TrainDataset(data_root, cfg.DATASET.list_train, cfg.DATASET, batch_per_gpu=2, seed=0)
    run = T.Trainer(cfg, T.distributed.DistEnv(), torch.device("cpu"), [],
                    SegmentationNetwork(enc, dec), module, module,
                    T.create_optimizers((enc, dec), cfg), None, dataset, None)
    bns = [m for m in module.modules() if isinstance(m, SynchronizedBatchNorm2d)]
    bn = bns[0]
    inputs = []
    bn.register_forward_hook(lambda m, args, out: inputs.append(args[0].detach().clone()))
    running_iter = bn._running_iter.clone()
    T.precise_bn(run, 3)

    assert len(inputs) == 3
    expect_mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in inputs]).mean(0)
    expect_var = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in inputs]).mean(0)
    torch.testing.assert_close(bn.running_mean, expect_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, expect_var, rtol=1e-5, atol=1e-6)
    assert all(m.momentum == 0.001 for m in bns) and not module.training  # restored
    # the synchronised moving average continues from the new statistics
    assert torch.equal(bn._running_iter, running_iter)
    torch.testing.assert_close(bn._tmp_running_mean / bn._running_iter, bn.running_mean)


def test_bf16_autocast_and_channels_last_train(data_root, tmp_path):
    summary = T.main(_cfg(data_root, tmp_path, "TRAIN.precision", "bf16",
                          "TRAIN.num_epoch", 1, "TRAIN.epoch_iters", 2), "cpu")
    assert len(summary.history["train"]["loss"]) == 2
    assert all(torch.isfinite(torch.tensor(summary.history["train"]["loss"])))
    assert os.path.isfile(tmp_path / "state_epoch_1.pth")


def test_default_training_step_is_the_fast_one_and_exact_switches_it_off(
        data_root, tmp_path, monkeypatch):
    """By default train.py trains with channels-last, the factorized PPM head and
    fused SGD; TRAIN.exact True with the original's operations (that both compute
    the same step: test_optim / test_models). On this tiny
    ill-conditioned model (4x4 maps, batch 2) only the first loss is compared:
    later ones drift apart with float rounding whatever the layout."""
    opts = ("MODEL.arch_decoder", "ppm_deepsup", "TRAIN.num_epoch", 1, "TRAIN.epoch_iters", 2)
    seen = []
    real_forward = T.Trainer.forward

    def spy(run, batches, model=None):
        seen.append((run, batches[0]["img_data"]))
        return real_forward(run, batches, model)

    monkeypatch.setattr(T.Trainer, "forward", spy)
    plain = T.main(_cfg(data_root, tmp_path / "plain", *opts, "TRAIN.exact", True), "cpu")
    fast = T.main(_cfg(data_root, tmp_path / "fast", *opts), "cpu")
    (run0, img0), (run1, img1) = seen[0], seen[2]
    assert not run0.module.decoder.factorized_pyramid and run1.module.decoder.factorized_pyramid
    assert not img0.is_contiguous(memory_format=torch.channels_last)
    assert img1.is_contiguous(memory_format=torch.channels_last)
    assert run1.module.decoder.conv_last[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(run0.optimizers[0].param_groups[0].get(k) for k in ("fused", "foreach"))
    assert any(run1.optimizers[0].param_groups[0].get(k) for k in ("fused", "foreach"))
    a, b = plain.history["train"]["loss"][0], fast.history["train"]["loss"][0]
    assert abs(a - b) <= 1e-4 * abs(a)
    for kind in ("encoder", "decoder"):  # the same checkpoint files
        wa = load_file(str(tmp_path / "plain" / f"{kind}_epoch_1.pth"))
        wb = load_file(str(tmp_path / "fast" / f"{kind}_epoch_1.pth"))
        assert list(wa) == list(wb) and all(wa[k].shape == wb[k].shape for k in wa)


def test_resumed_optimizer_keeps_its_own_implementation():
    net = nn.Conv2d(2, 3, 3)
    cfg = load_cfg(None, ["TRAIN.exact", "True"])
    plain = T.create_optimizers((net, net), cfg)[0]
    assert not plain.param_groups[0].get("fused") and not plain.param_groups[0].get("foreach")
    cfg.TRAIN.exact = False
    fast = T.create_optimizers((net, net), cfg)[0]
    impl = {k: fast.param_groups[0].get(k) for k in ("fused", "foreach")}
    assert any(impl.values())
    T.optim.load_optimizer_state(fast, plain.state_dict())
    assert {k: fast.param_groups[0].get(k) for k in ("fused", "foreach")} == impl


# ----------------------------------------------------------------------------- errors and the CLI

def _cli():
    from mit_semseg.commands import train
    return train


def test_missing_dataset_says_where_and_how(data_root, tmp_path, capsys):
    missing_list = _cfg(data_root, tmp_path, "DATASET.list_train", tmp_path / "nope.odgt")
    with pytest.raises(T.DataNotFoundError, match=r"training list not found: .*nope.odgt"):
        T.check_dataset(missing_list)
    missing_root = _cfg(data_root, tmp_path, "DATASET.root_dataset", tmp_path / "no_root")
    with pytest.raises(T.DataNotFoundError, match=r"dataset folder not found: .*no_root"):
        T.check_dataset(missing_root)
    ade = load_cfg(None, ["DATASET.root_dataset", str(tmp_path) + "/",
                          "DATASET.list_train", os.path.join(ROOT, "data", "training.odgt")])
    with pytest.raises(T.DataNotFoundError) as err:
        T.check_dataset(ade)
    msg = str(err.value)
    assert "ADEChallengeData2016/images/training/ADE_train_00000001.jpg" in msg
    assert "download_ADE20K.sh" in msg and "python -m mit_semseg synthetic" in msg

    status = _cli().main(["--gpus", "cpu", "--cfg", os.path.join(ROOT, "config", "synthetic-demo.yaml"),
                         *_opts(data_root, tmp_path, "DATASET.list_train", tmp_path / "nope.odgt")])
    assert status == 1
    err_text = capsys.readouterr().err
    assert "error: training list not found" in err_text and "download_ADE20K.sh" in err_text


def test_cli_reports_bad_overrides(capsys):
    assert _cli().main(["--gpus", "cpu", "TRAIN.no_such_key", "1"]) == 1
    assert "unknown config key 'TRAIN.no_such_key'" in capsys.readouterr().err
    assert _cli().main(["--gpus", "cpu", "TRAIN.precision", "fp8"]) == 1
    assert "TRAIN.precision 'fp8'" in capsys.readouterr().err


def test_start_epoch_without_checkpoint_names_the_file(data_root, tmp_path):
    with pytest.raises(CheckpointError, match=r"encoder_epoch_3.pth"):
        T.main(_cfg(data_root, tmp_path, "TRAIN.start_epoch", 3), "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_gpu_request_without_cuda_falls_back_to_cpu():
    env = T.distributed.DistEnv()
    with pytest.warns(UserWarning, match="CUDA is not available"):
        assert T.select_devices("0-3", env) == (torch.device("cpu"), [])
    assert T.select_devices("cpu", env) == (torch.device("cpu"), [])
    assert T.select_devices("auto", env) == (torch.device("cpu"), [])
    with pytest.raises(MitSemsegError, match="mixes 'cpu'"):
        T.select_devices("cpu,0", env)


# ----------------------------------------------------------------------------- several devices

def test_torchrun_two_cpu_processes(data_root, tmp_path):
    cfg = _cfg(data_root, tmp_path / "run", "TRAIN.num_epoch", 1, "TRAIN.epoch_iters", 2,
               "TRAIN.precise_bn_iters", 1, "TRAIN.dist_timeout", 120)
    torchrun_train(cfg, tmp_path)
    out = tmp_path / "run"
    assert sorted(os.listdir(out)) == ["config.yaml", "decoder_epoch_1.pth", "encoder_epoch_1.pth",
                                       "history_epoch_1.pth", "log.txt", "metrics.jsonl",
                                       "state_epoch_1.pth"]
    ModelBuilder.build_encoder("mobilenetv2dilated", 320, weights=str(out / "encoder_epoch_1.pth"),
                               pretrained=False)
    ModelBuilder.build_decoder("c1_deepsup", 320, NUM_CLASS, weights=str(out / "decoder_epoch_1.pth"))
    state = load_training_state(str(out / "state_epoch_1.pth"))
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    log = (out / "log.txt").read_text()
    assert "rank 0 of 2" in log and "global batch = 4 images" in log
    assert log.count("Epoch: [1][1/2]") == 1  # rank 1 does not log


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_dataparallel_on_two_gpus(data_root, tmp_path):
    summary = T.main(_cfg(data_root, tmp_path, "TRAIN.num_epoch", 1, "TRAIN.epoch_iters", 2,
                          "TRAIN.precise_bn_iters", 1), "0,1")
    state = load_training_state(summary.last_checkpoint)
    assert state["num_devices"] == 2
    ModelBuilder.build_encoder("mobilenetv2dilated", 320, weights=str(tmp_path / "encoder_epoch_1.pth"),
                               pretrained=False)
