"""TRAIN.save_format safetensors: training writes encoder/decoder_epoch_N.safetensors
(state and history stay .pth), a run continues from them exactly, and every
reader finds them under the .pth name too."""
import os
import shutil

import pytest
import torch

import mit_semseg.training as T
from mit_semseg.checkpoints.ledger import SUMS_NAME, read_sums, record_sha256, sha256_file
from mit_semseg.checkpoints.files import atomic_save, checkpoint_paths
from mit_semseg.checkpoints.formats import read_weights
from mit_semseg.config import ConfigError, load_cfg
from mit_semseg.data.synthetic import make_synthetic_dataset
from mit_semseg.inference import Segmenter

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    make_synthetic_dataset(root, num_train=4, num_val=1, size_range=(32, 48), num_class=4)
    return root


def _opts(data_root, out_dir, *extra):
    return ["DATASET.root_dataset", data_root,
            "DATASET.list_train", os.path.join(data_root, "training.odgt"),
            "DATASET.num_class", "4", "DATASET.imgSizes", "(32,)", "DATASET.imgMaxSize", "64",
            "DATASET.class_table", "",
            "MODEL.arch_encoder", "mobilenetv2dilated", "MODEL.arch_decoder", "c1_deepsup",
            "MODEL.fc_dim", "320", "MODEL.pretrained", "False",
            "TRAIN.batch_size_per_gpu", "2", "TRAIN.num_epoch", "2", "TRAIN.epoch_iters", "2",
            "TRAIN.workers", "0", "TRAIN.disp_iter", "1", "TRAIN.save_format", "safetensors",
            "TEST.workers", "0", "DIR", str(out_dir), *map(str, extra)]


def test_training_writes_safetensors_and_resumes_from_them(data_root, tmp_path):
    run = tmp_path / "run"
    T.main(load_cfg(None, _opts(data_root, run)), "cpu")
    names = sorted(os.listdir(run))
    for epoch in (1, 2):
        assert f"encoder_epoch_{epoch}.safetensors" in names
        assert f"decoder_epoch_{epoch}.safetensors" in names
        assert f"state_epoch_{epoch}.pth" in names and f"history_epoch_{epoch}.pth" in names
        assert f"encoder_epoch_{epoch}.pth" not in names

    # continue from epoch 1 (its .safetensors weights and .pth state): epoch 2 is the same
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("encoder_epoch_1.safetensors", "decoder_epoch_1.safetensors",
                 "history_epoch_1.pth", "state_epoch_1.pth"):
        shutil.copy(run / name, resumed)
    T.main(load_cfg(None, _opts(data_root, resumed, "TRAIN.start_epoch", 1)), "cpu")
    for part in ("encoder", "decoder"):
        a = read_weights(str(run / f"{part}_epoch_2.safetensors"))
        b = read_weights(str(resumed / f"{part}_epoch_2.safetensors"))
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)

    # readers: the original's .pth checkpoint name finds the .safetensors files
    assert checkpoint_paths(str(run), "epoch_2.pth") == (
        str(run / "encoder_epoch_2.safetensors"), str(run / "decoder_epoch_2.safetensors"))
    seg = Segmenter.from_config(load_cfg(None, _opts(data_root, run)), checkpoint="epoch_2.pth",
                                device="cpu")
    assert seg(torch.zeros(40, 40, 3, dtype=torch.uint8).numpy()).shape == (40, 40)


def test_a_wrong_save_format_fails_before_training(data_root, tmp_path):
    with pytest.raises(ConfigError, match="TRAIN.save_format 'npz' is not one of pth, "
                                          "safetensors"):
        T.main(load_cfg(None, _opts(data_root, tmp_path, "TRAIN.save_format", "npz")), "cpu")


def test_overwriting_a_listed_file_keeps_its_hash_true(tmp_path):
    """Training into a folder that holds a downloaded model: the SHA256SUMS entry
    follows the new file, so later loads do not refuse it."""
    path = tmp_path / "encoder_epoch_20.pth"
    atomic_save({"w": torch.zeros(2)}, str(path))
    record_sha256(str(tmp_path), path.name, sha256_file(str(path)))
    atomic_save({"w": torch.ones(2)}, str(path))
    assert read_sums(str(tmp_path)) == {path.name: sha256_file(str(path))}
    assert torch.equal(read_weights(str(path))["w"], torch.ones(2))
    unlisted = tmp_path / "state_epoch_20.pth"
    atomic_save({"x": 1}, str(unlisted))
    assert set(read_sums(str(tmp_path))) == {path.name}
    assert sorted(os.listdir(tmp_path)) == [SUMS_NAME, path.name, unlisted.name]


def test_missing_checkpoint_names_both_formats(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        checkpoint_paths(str(tmp_path), "epoch_3.pth")
    message = str(info.value)
    assert str(tmp_path / "encoder_epoch_3.pth") in message
    assert "encoder_epoch_3.safetensors" in message and "\n" not in message
