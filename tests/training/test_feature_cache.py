"""Frozen encoders and the feature cache (mit_semseg.training.feature_cache).

A tiny MiT encoder (no timm needed) under the DINOv2 linear head stands in for a
frozen DINOv2; one test runs the real timm DINOv2 path where timm is installed.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
import torch

import mit_semseg.training as T
from _support import crash_after_checkpoint
from mit_semseg.checkpoints.files import load_file
from mit_semseg.config import ConfigValueError, load_cfg
from mit_semseg.data.synthetic import make_synthetic_dataset
from mit_semseg.models import build_model
from mit_semseg.training.feature_cache import CachedTrainDataset, cache_key

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASS = 4
TINY_MIT = """MODEL:
  encoder_options:
    embed_dims: [8, 16, 24, 32]
    depths: [1, 1, 1, 1]
    num_heads: [1, 2, 3, 4]
"""
TINY_DINO = """MODEL:
  encoder_options:
    layers: 2
    cls_token: True
    model_args: {depth: 2, embed_dim: 16, num_heads: 2, img_size: 28}
"""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    make_synthetic_dataset(root, num_train=6, num_val=1, size_range=(32, 48), num_class=NUM_CLASS)
    return root


def _cfg(data_root, out_dir, *extra, yaml=TINY_MIT, encoder="mit_b0", decoder="linear"):
    path = os.path.join(os.path.dirname(str(out_dir)),
                        f"{os.path.basename(str(out_dir))}-model.yaml")
    with open(path, "w") as fh:
        fh.write(yaml)
    opts = ["DATASET.root_dataset", data_root,
            "DATASET.list_train", os.path.join(data_root, "training.odgt"),
            "DATASET.num_class", str(NUM_CLASS), "DATASET.imgSizes", "(32, 40)",
            "DATASET.imgMaxSize", "64", "DATASET.padding_constant", "8",
            "DATASET.segm_downsampling_rate", "4",
            "MODEL.arch_encoder", encoder, "MODEL.arch_decoder", decoder,
            "MODEL.pretrained", "False", "MODEL.freeze_encoder", "True",
            "TRAIN.batch_size_per_gpu", "1", "TRAIN.num_epoch", "2", "TRAIN.epoch_iters", "4",
            "TRAIN.workers", "0", "TRAIN.disp_iter", "1", "TRAIN.lr_decoder", "0.05",
            "DIR", str(out_dir), *map(str, extra)]
    return load_cfg(path, opts)


def _decoder_state(folder, epoch):
    return load_file(os.path.join(str(folder), f"decoder_epoch_{epoch}.pth"))


def test_frozen_encoder_trains_only_the_decoder(data_root, tmp_path):
    cfg = _cfg(data_root, tmp_path / "run")
    torch.manual_seed(int(cfg.TRAIN.seed))
    start = build_model(cfg).encoder.state_dict()
    T.main(cfg, "cpu")
    encoder = load_file(str(tmp_path / "run" / "encoder_epoch_2.pth"))
    assert all(torch.equal(encoder[k], start[k]) for k in start)
    first = build_model(cfg).decoder.state_dict()
    decoder = _decoder_state(tmp_path / "run", 2)
    assert not torch.equal(decoder["conv_seg.weight"], first["conv_seg.weight"])


@pytest.fixture(scope="module")
def cached_run(data_root, tmp_path_factory):
    """Two epochs of four steps from the cache, checkpoints every 2 steps."""
    out = tmp_path_factory.mktemp("cached")
    cache = tmp_path_factory.mktemp("cache")
    summary = T.main(_cfg(data_root, out, "TRAIN.feature_cache", cache,
                          "TRAIN.checkpoint_every", 2), "cpu")
    return out, cache, summary


def test_training_from_the_cache_equals_training_without_it(data_root, cached_run, tmp_path):
    out, cache, summary = cached_run
    plain = T.main(_cfg(data_root, tmp_path, "TRAIN.checkpoint_every", 2), "cpu")
    a, b = summary.history["train"], plain.history["train"]
    assert a["epoch"] == b["epoch"]
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4, atol=1e-5)
    for key, value in _decoder_state(tmp_path, 2).items():
        assert torch.allclose(_decoder_state(out, 2)[key].float(), value.float(),
                              rtol=1e-4, atol=1e-5), key
    entries = os.listdir(cache)
    assert len(entries) == 1
    meta = json.load(open(os.path.join(cache, entries[0], "meta.json")))
    # 6 images x 2 sides x (plain, mirrored)
    assert meta["images"] == 6 and len(meta["views"]) == 4 and meta["levels"] == 4


def test_a_killed_cached_run_resumes_to_the_same_weights(data_root, cached_run, tmp_path,
                                                         monkeypatch):
    ref, cache, ref_summary = cached_run

    with crash_after_checkpoint("state_iter_6.pth"):
        T.main(_cfg(data_root, tmp_path, "TRAIN.feature_cache", cache,
                    "TRAIN.checkpoint_every", 2), "cpu")
    summary = T.main(_cfg(data_root, tmp_path, "TRAIN.feature_cache", cache,
                          "TRAIN.checkpoint_every", 2), "cpu", resume="auto")
    assert summary.history == ref_summary.history
    for key, value in _decoder_state(ref, 2).items():
        assert torch.equal(_decoder_state(tmp_path, 2)[key], value), key
    assert len(os.listdir(cache)) == 1  # the entry was reused, not rebuilt


def test_the_key_follows_encoder_weights_and_preprocessing(data_root, tmp_path):
    from mit_semseg.data.datasets import TrainDataset
    cfg = _cfg(data_root, tmp_path / "a")
    net = build_model(cfg)

    def key(c, encoder=net.encoder):
        ds = TrainDataset(c.DATASET.root_dataset, c.DATASET.list_train, c.DATASET)
        return cache_key(c, encoder, ds)[0]

    base = key(cfg)
    assert key(_cfg(data_root, tmp_path / "b")) == base  # DIR and TRAIN.* do not matter
    assert key(_cfg(data_root, tmp_path / "c", "DATASET.imgSizes", "(32,)")) != base
    assert key(_cfg(data_root, tmp_path / "d", "TRAIN.ignore_padding", "True")) != base
    other = build_model(cfg).encoder
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    assert key(cfg, other) != base
    # an image rewritten in place
    first = json.loads(open(cfg.DATASET.list_train).readline())["fpath_img"]
    path = os.path.join(data_root, first)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert key(cfg) != base


def test_batches_of_images_of_different_sizes_pad_maps_and_labels(data_root, tmp_path):
    cfg = _cfg(data_root, tmp_path / "run", "TRAIN.feature_cache", tmp_path / "cache",
               "TRAIN.batch_size_per_gpu", "2", "TRAIN.ignore_padding", "True",
               "TRAIN.num_epoch", "1", "TRAIN.epoch_iters", "2")
    summary = T.main(cfg, "cpu")
    assert all(np.isfinite(summary.history["train"]["loss"]))
    (entry,) = os.listdir(tmp_path / "cache")
    from mit_semseg.data.datasets import TrainDataset
    ds = TrainDataset(cfg.DATASET.root_dataset, cfg.DATASET.list_train, cfg.DATASET,
                      batch_per_gpu=2, ignore_padding=True)
    cached = CachedTrainDataset.from_dataset(ds, str(tmp_path / "cache" / entry))
    sizes = [(r["height"], r["width"]) for r in ds.list_sample]
    i, j = next((i, j) for i in range(len(sizes)) for j in range(len(sizes))
                if sizes[i][0] < sizes[j][0])
    batch = cached.make_batch([i, j], 32, [False, True])
    alone = cached.make_batch([i], 32, [False])
    h, w = alone["seg_label"].shape[1:]
    assert torch.equal(batch["seg_label"][0, :h, :w], alone["seg_label"][0])
    assert (batch["seg_label"][0, h:] == -1).all()
    assert torch.equal(batch["feat_0"][0, :, :h, :w], alone["feat_0"][0])
    assert (batch["feat_0"][0, :, h:] == 0).all()


def test_cache_needs_a_frozen_encoder(data_root, tmp_path):
    with pytest.raises(ConfigValueError, match="set MODEL.freeze_encoder True"):
        _cfg(data_root, tmp_path, "TRAIN.feature_cache", tmp_path / "c",
             "MODEL.freeze_encoder", "False")


@pytest.mark.timm
@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="needs timm")
def test_dinov2_linear_probe_from_the_cache(data_root, tmp_path):
    cfg = _cfg(data_root, tmp_path / "run", "TRAIN.feature_cache", tmp_path / "cache",
               "DATASET.imgSizes", "(28, 42)", "DATASET.padding_constant", "14",
               "DATASET.segm_downsampling_rate", "2", yaml=TINY_DINO, encoder="dinov2_vits14",
               decoder="dinov2_linear")
    summary = T.main(cfg, "cpu")
    assert all(np.isfinite(summary.history["train"]["loss"]))
    (entry,) = os.listdir(tmp_path / "cache")
    meta = json.load(open(os.path.join(tmp_path, "cache", entry, "meta.json")))
    assert meta["levels"] == 2
    shutil.rmtree(tmp_path / "cache")
