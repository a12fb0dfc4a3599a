"""mit_semseg.checkpoint: crash-safe writes, safe reads, state-file discovery, RNG round trip."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from mit_semseg.checkpoints import files as F
from mit_semseg.training import state as S


def test_atomic_save_replaces_and_reads_back(tmp_path):
    path = str(tmp_path / "encoder_epoch_1.pth")
    F.atomic_save({"w": torch.ones(3)}, path)
    F.atomic_save({"w": torch.zeros(3)}, path)
    assert torch.equal(F.load_file(path)["w"], torch.zeros(3))
    assert os.listdir(tmp_path) == ["encoder_epoch_1.pth"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("crash", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_crash_during_write_keeps_previous_file(tmp_path, monkeypatch, crash):
    path = str(tmp_path / "decoder_epoch_3.pth")
    F.atomic_save({"w": torch.arange(4.0)}, path)
    before = open(path, "rb").read()

    def crashing_save(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a checkpoint")  # partial bytes, then the crash
        raise crash

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(type(crash)):
        F.atomic_save({"w": torch.zeros(4)}, path)
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert torch.equal(F.load_file(path)["w"], torch.arange(4.0))
    assert os.listdir(tmp_path) == ["decoder_epoch_3.pth"]  # no partial file left behind


def test_killed_write_leaves_only_a_temporary_that_is_cleaned(tmp_path):
    # A SIGKILL between creating the temporary and the rename leaves ".NAME.xxx.tmp" only.
    (tmp_path / ".state_epoch_2.pth.abc123.tmp").write_bytes(b"partial")
    (tmp_path / "state_epoch_1.pth").write_bytes(b"keep")
    removed = F.remove_stale_temporaries(str(tmp_path))
    assert [os.path.basename(p) for p in removed] == [".state_epoch_2.pth.abc123.tmp"]
    assert os.listdir(tmp_path) == ["state_epoch_1.pth"]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(F.CheckpointError, match="not found: .*missing.pth"):
        F.load_file(str(tmp_path / "missing.pth"))
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(F.CheckpointError, match="truncated.pth is damaged"):
        F.load_file(str(bad))
    weights = tmp_path / "encoder_epoch_1.pth"
    torch.save({"conv.weight": torch.ones(1)}, weights)
    with pytest.raises(F.CheckpointError, match="not a training-state file"):
        S.load_training_state(str(weights))


def test_unsafe_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"obj": object()}, path)  # arbitrary objects need weights_only=False
    with pytest.raises(F.CheckpointError, match="evil.pth holds Python objects besides tensors and cannot be loaded safely"):
        F.load_file(str(path))


def test_latest_state_compares_epoch_and_iteration_files(tmp_path):
    assert S.latest_state(str(tmp_path / "nowhere"), 10) is None
    for name in ("state_epoch_1.pth", "state_epoch_2.pth", "state_iter_15.pth",
                 "state_iter_20.pth", "encoder_epoch_3.pth"):
        (tmp_path / name).write_bytes(b"")
    found = [os.path.basename(p) for _, p in S.list_states(str(tmp_path), 10)]
    # epoch 2 = iteration 20; at equal progress the epoch file wins
    assert found == ["state_epoch_1.pth", "state_iter_15.pth", "state_iter_20.pth",
                     "state_epoch_2.pth"]
    assert S.latest_state(str(tmp_path), 10).endswith("state_epoch_2.pth")
    assert S.latest_state(str(tmp_path), 5).endswith("state_iter_20.pth")


def test_rng_state_round_trip_through_a_safe_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in the numpy state
    random.gauss(0, 1)
    path = str(tmp_path / "rng.pth")
    F.atomic_save({"rng": S.capture_rng_state()}, path)
    expected = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(),
                np.random.standard_normal(), torch.rand(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    S.restore_rng_state(F.load_file(path)["rng"])
    got = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(),
           np.random.standard_normal(), torch.rand(3).tolist())
    assert got == expected


def test_epoch_paths_use_the_original_names():
    paths = S.epoch_paths("ckpt/run", 7)
    assert paths == {"encoder": "ckpt/run/encoder_epoch_7.pth",
                     "decoder": "ckpt/run/decoder_epoch_7.pth",
                     "history": "ckpt/run/history_epoch_7.pth",
                     "state": "ckpt/run/state_epoch_7.pth"}
    assert S.iter_state_path("ckpt/run", 1500) == "ckpt/run/state_iter_1500.pth"
