"""The original's old module paths behave as the original's did (thin re-exports)."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from mit_semseg.models import ModelBuilder


def test_old_paths_are_the_same_objects() -> None:
    import mit_semseg.lib.nn as nn_
    from mit_semseg.lib.nn.modules import batchnorm, comm, replicate
    from mit_semseg.lib.nn.parallel import data_parallel
    from mit_semseg.models import decoders, mobilenet, models, resnet, utils, weights
    assert batchnorm.SynchronizedBatchNorm2d is nn_.SynchronizedBatchNorm2d
    assert replicate.patch_replication_callback is nn_.patch_replication_callback
    assert data_parallel.UserScatteredDataParallel is nn_.UserScatteredDataParallel
    assert comm.SyncMaster is batchnorm.SyncMaster
    assert models.C1DeepSup is decoders.C1DeepSup and models.ResnetDilated is resnet.ResnetDilated
    assert models.MobileNetV2Dilated is mobilenet.MobileNetV2Dilated
    assert models.BatchNorm2d is nn_.SynchronizedBatchNorm2d is resnet.BatchNorm2d
    assert utils.load_url is weights.load_url
    from mit_semseg.lib.utils import data
    assert data.DataLoader is torch.utils.data.DataLoader
    assert data.DistributedSampler is torch.utils.data.DistributedSampler


def test_as_numpy_walks_nested_structures() -> None:
    from mit_semseg.lib.utils import as_numpy
    x = torch.arange(6.0, requires_grad=True).view(2, 3)
    out = as_numpy({"a": [x * 2, (torch.tensor(3), 4.5)], "b": "text", "c": np.ones(2)})
    assert isinstance(out["a"], list) and isinstance(out["a"][1], list)
    np.testing.assert_array_equal(out["a"][0], np.arange(6.0).reshape(2, 3) * 2)
    assert out["a"][1][0] == 3 and out["a"][1][0].shape == () and out["a"][1][1] == 4.5
    assert out["b"] == np.array("text")
    np.testing.assert_array_equal(out["c"], np.ones(2))


def test_variable_era_helpers_have_todays_meaning() -> None:
    from mit_semseg.lib.utils import as_variable, mark_volatile
    x = torch.ones(2, requires_grad=True)
    both = as_variable({"x": x, "n": [1, 2]})
    assert both["x"] is x and torch.equal(both["n"][0], torch.tensor(1))
    frozen = mark_volatile([x * 3, {"y": x}, "keep"])
    assert not frozen[0].requires_grad and not frozen[1]["y"].requires_grad
    assert frozen[2] == "keep"


def test_imresize_matches_pil_and_names_valid_methods() -> None:
    from mit_semseg.dataset import imresize
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    for interp, method in (("nearest", Image.NEAREST), ("bilinear", Image.BILINEAR),
                           ("bicubic", Image.BICUBIC)):
        out = imresize(img, (17, 11), interp)
        assert out.size == (17, 11)
        assert np.array_equal(np.asarray(out), np.asarray(img.resize((17, 11), method)))
    assert imresize(img, (9, 9)).tobytes() == img.resize((9, 9), Image.BILINEAR).tobytes()
    with pytest.raises(ValueError, match="'lanczos'.*bicubic.*bilinear.*nearest"):
        imresize(img, (5, 5), "lanczos")


def test_process_range_and_regex_table() -> None:
    from mit_semseg.utils import REGEX, parse_devices, process_range
    assert list(process_range("gpu", ("3", "1"))) == ["gpu1", "gpu2", "gpu3"]
    matched = [fn(m.groups()) for pattern, fn in REGEX if (m := pattern.match("gpu0-2"))]
    assert matched == [["gpu0", "gpu1", "gpu2"]]
    assert parse_devices("0-1,gpu3,1") == ["gpu0", "gpu1", "gpu3"]


def test_original_constructors_build_the_same_models() -> None:
    from mit_semseg.models.models import C1DeepSup, ResnetDilated
    from mit_semseg.models.resnet import resnet18
    torch.manual_seed(0)
    enc = ResnetDilated(resnet18(), dilate_scale=8)
    dec = C1DeepSup(5, 512, True)
    ref_enc = ModelBuilder.build_encoder("resnet18dilated", 512, pretrained=False)
    ref_dec = ModelBuilder.build_decoder("c1_deepsup", 512, 5, use_softmax=True)
    assert enc.state_dict().keys() == ref_enc.state_dict().keys()
    assert dec.state_dict().keys() == ref_dec.state_dict().keys()
    ref_enc.load_state_dict(enc.state_dict())
    ref_dec.load_state_dict(dec.state_dict())
    x = torch.randn(1, 3, 40, 48)
    for net in (enc, dec, ref_enc, ref_dec):
        net.eval()
    with torch.no_grad():
        feats = enc(x, return_feature_maps=True)
        assert feats[-1].shape == (1, 512, 5, 6)  # dilated: stride 8
        out = dec(feats, segSize=(40, 48))
        ref = ref_dec(ref_enc(x, return_feature_maps=True), segSize=(40, 48))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(out.sum(1), torch.ones(1, 40, 48))


def test_original_block_helpers() -> None:
    from mit_semseg.models import hrnet, mobilenet, resnet, resnext
    conv = resnet.conv3x3(4, 8, stride=2)
    assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.bias is None
    assert resnext.conv3x3 is resnet.conv3x3 is hrnet.conv3x3
    stem, head = mobilenet.conv_bn(3, 8, 2), mobilenet.conv_1x1_bn(8, 16)
    assert [type(m).__name__ for m in stem] == ["Conv2d", "SynchronizedBatchNorm2d", "ReLU6"]
    assert stem[0].stride == (2, 2) and head[0].kernel_size == (1, 1)
    assert mobilenet.MobileNetV2(10, 224, 1.0).classifier[1].out_features == 10
    with pytest.raises(ValueError, match="multiple of 32"):
        mobilenet.MobileNetV2(10, 100)
    assert hrnet.BN_MOMENTUM == 0.1 and hrnet.blocks_dict["BASIC"] is hrnet.BasicBlock
    block = resnext.GroupBottleneck(64, 32, 1, 8)  # the original's order: stride, groups
    assert block.conv2.groups == 8 and block.conv3.out_channels == 64
    net = resnext.ResNeXt(resnext.GroupBottleneck, [1, 1, 1, 1], groups=4, num_classes=3)
    assert net(torch.randn(1, 3, 224, 224)).shape == (1, 3)  # ImageNet head: 7x7 pooling


def test_hrnet_module_single_scale_output() -> None:
    from mit_semseg.models.hrnet import BasicBlock, HighResolutionModule
    module = HighResolutionModule(2, BasicBlock, [1, 1], [8, 16], [8, 16], "SUM",
                                  multi_scale_output=False).eval()
    out = module([torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8)])
    assert len(out) == 1 and out[0].shape == (1, 8, 16, 16)
    with pytest.raises(ValueError, match="fuse_method"):
        HighResolutionModule(2, BasicBlock, [1, 1], [8, 16], [8, 16], "CAT")


def test_load_url_downloads_once_and_maps(tmp_path) -> None:
    from mit_semseg.models.utils import load_url
    from mit_semseg.models.weights import WeightsError
    src = tmp_path / "src" / "tiny-imagenet.pth"
    src.parent.mkdir()
    torch.save({"w": torch.arange(3.0)}, src)
    cache = tmp_path / "pretrained"
    state = load_url(src.as_uri(), model_dir=str(cache), map_location="cpu")
    assert torch.equal(state["w"], torch.arange(3.0))
    assert (cache / "tiny-imagenet.pth").is_file()
    src.unlink()  # served from the cache from now on
    assert torch.equal(load_url(src.as_uri(), model_dir=str(cache))["w"], torch.arange(3.0))
    with pytest.raises(WeightsError, match=r"cannot download .*missing\.pth.*place it at"):
        load_url((tmp_path / "missing.pth").as_uri(), model_dir=str(cache))
    assert not (cache / "missing.pth").exists()


def test_async_copy_to_and_user_scattered_collate(monkeypatch) -> None:
    from collections import namedtuple

    from mit_semseg.lib.nn import async_copy_to, user_scattered_collate
    batch = [{"img": torch.ones(2)}, {"img": torch.zeros(1)}]
    assert user_scattered_collate(batch) is batch
    Pair = namedtuple("Pair", "a b")
    out = async_copy_to({"x": [torch.ones(1), (torch.zeros(1), "s")], "p": Pair(torch.ones(1), 2)},
                        "cpu")
    assert isinstance(out["x"], list) and isinstance(out["x"][1], tuple)
    assert out["x"][1][1] == "s" and isinstance(out["p"], Pair) and out["p"].b == 2
    calls = []

    def fake_cuda(self, device=None, non_blocking=False):
        calls.append((device, non_blocking))
        return self
    monkeypatch.setattr(torch.Tensor, "cuda", fake_cuda)
    async_copy_to({"a": torch.ones(1), "b": [torch.ones(1)]}, 1)
    async_copy_to(torch.ones(1), "0")  # the original's eval.py passes --gpu as a string
    assert calls == [(1, True), (1, True), (0, True)]


def test_sync_master_gathers_and_answers_every_slave() -> None:
    from mit_semseg.lib.nn.modules.comm import FutureResult, SyncMaster

    def callback(messages):
        total = sum(msg for _, msg in messages)
        return [(ident, total + ident) for ident, _ in messages]
    master = SyncMaster(callback, timeout=10)
    pipes = [master.register_slave(i) for i in (1, 2, 3)]
    assert master.nr_slaves == 3
    for _ in range(2):  # two rounds with the same pipes
        answers = {}
        threads = [threading.Thread(target=lambda p=p: answers.__setitem__(
            p.identifier, p.run_slave(10 * p.identifier))) for p in pipes]
        for t in threads:
            t.start()
        assert master.run_master(1) == 61
        for t in threads:
            t.join(timeout=10)
        assert answers == {1: 62, 2: 63, 3: 64}
    future = FutureResult()
    future.put(None)
    with pytest.raises(RuntimeError, match="not been fetched"):
        future.put(1)
    assert future.get() is None
    with pytest.raises(TimeoutError):
        future.get(timeout=0.01)


def test_dict_gather_data_parallel_without_gpus_runs_the_module() -> None:
    from mit_semseg.lib.nn.parallel.data_parallel import DictGatherDataParallel
    net = DictGatherDataParallel(torch.nn.Linear(2, 1))
    assert net(torch.ones(3, 2)).shape == (3, 1)


def test_torch_test_case_compares_tensors() -> None:
    from mit_semseg.lib.nn.modules.unittest import TorchTestCase
    case = TorchTestCase()
    case.assertTensorClose(torch.ones(2), torch.ones(2) + 1e-4)
    with pytest.raises(AssertionError, match="max abs diff"):
        case.assertTensorClose(torch.ones(2), torch.zeros(2))


def test_segmentation_module_takes_a_one_batch_list() -> None:
    """The original train.py on one device passes the loader's [batch] as it is."""
    from mit_semseg.models import SegmentationModule
    torch.manual_seed(0)
    enc = ModelBuilder.build_encoder("resnet18dilated", 512, pretrained=False)
    dec = ModelBuilder.build_decoder("c1", 512, 4)
    module = SegmentationModule(enc, dec, torch.nn.NLLLoss(ignore_index=-1)).eval()
    batch = {"img_data": torch.randn(1, 3, 32, 32), "seg_label": torch.randint(-1, 4, (1, 4, 4))}
    with torch.no_grad():
        loss, acc = module([batch])
        ref_loss, ref_acc = module(batch)
    assert torch.equal(loss, ref_loss) and torch.equal(acc, ref_acc)


def test_old_dataloader_module_maps_onto_torch() -> None:
    from mit_semseg.lib.utils.data import dataloader
    loader = dataloader.DataLoader(torch.utils.data.TensorDataset(torch.arange(4)), batch_size=2)
    assert isinstance(iter(loader), dataloader.DataLoaderIter)
    assert [b[0].tolist() for b in loader] == [[0, 1], [2, 3]]
    assert torch.equal(dataloader.default_collate([torch.ones(2), torch.zeros(2)]),
                       torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert dataloader.numpy_type_map["float32"] is torch.FloatTensor
    assert dataloader.numpy_type_map[str(np.zeros(1, np.int64).dtype)] is torch.LongTensor
