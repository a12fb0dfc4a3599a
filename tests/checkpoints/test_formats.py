"""Weight files as .pth and .safetensors: bit-identical round trips, clear errors."""
import os
import sys

import pytest
import torch

from mit_semseg.checkpoints.ledger import SUMS_NAME, read_sums, record_sha256, sha256_file
from mit_semseg.checkpoints.formats import FormatError, convert, read_weights, write_weights
from mit_semseg.models import ModelBuilder

pytestmark = pytest.mark.usefixtures("one_thread")


def _bits(tensor):
    return tensor.reshape(-1).view(torch.uint8) if tensor.numel() else tensor.reshape(-1)


def _assert_identical(got, want):
    assert list(got) == list(want)
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype and got[key].shape == tensor.shape, key
        assert torch.equal(_bits(got[key]), _bits(tensor)), key


@pytest.fixture(scope="module")
def encoder_state():
    """A small real encoder's state dict, BatchNorm buffers moved off their defaults."""
    torch.manual_seed(0)
    net = ModelBuilder.build_encoder("mobilenetv2dilated", 320, "", pretrained=False)
    state = net.state_dict()
    for index, key in enumerate(k for k in state if k.endswith("num_batches_tracked")):
        state[key].fill_(1000 + index)
    for key in (k for k in state if k.endswith("running_var")):
        state[key].uniform_(0.5, 2.0)
    return state


def test_pth_safetensors_pth_round_trip_is_bit_identical(encoder_state, tmp_path):
    counters = [k for k in encoder_state if k.endswith("num_batches_tracked")]
    assert counters and all(encoder_state[k].dtype == torch.int64 for k in counters)
    pth = str(tmp_path / "encoder_epoch_20.pth")
    torch.save(encoder_state, pth)  # as the trainer writes it
    st = convert(pth, str(tmp_path / "encoder_epoch_20.safetensors"))
    back = convert(st, str(tmp_path / "back.pth"))
    for path in (st, back):
        _assert_identical(read_weights(path), encoder_state)
    net = ModelBuilder.build_encoder("mobilenetv2dilated", 320, "", pretrained=False)
    net.load_state_dict(read_weights(st), strict=True)
    assert int(net.state_dict()[counters[0]]) == 1000


def test_dtypes_order_and_special_values_survive(tmp_path):
    state = {
        "zeta": torch.tensor([float("nan"), -0.0, float("inf"), 1e-45]),
        "alpha": torch.arange(6, dtype=torch.float64).reshape(2, 3),
        "half": torch.randn(3, dtype=torch.float16),
        "brain": torch.randn(3).to(torch.bfloat16),
        "bytes": torch.tensor([0, 255], dtype=torch.uint8),
        "signed": torch.tensor([-128, 127], dtype=torch.int8),
        "int32": torch.tensor([2**31 - 1], dtype=torch.int32),
        "flags": torch.tensor([True, False]),
        "num_batches_tracked": torch.tensor(2**40, dtype=torch.int64),
        "empty": torch.zeros(0, 4),
    }
    for suffix in (".safetensors", ".pth"):
        path = str(tmp_path / f"w{suffix}")
        write_weights(state, path)
        _assert_identical(read_weights(path), state)


def test_shared_and_non_contiguous_tensors_are_copied_not_changed(tmp_path):
    weight = torch.arange(12.0).reshape(3, 4)
    state = {"weight": weight, "tied": weight, "transposed": weight.t(), "row": weight[1],
             "broadcast": torch.arange(3.0).expand(2, 3)}
    before = {k: v.clone() for k, v in state.items()}
    path = str(tmp_path / "shared.safetensors")
    write_weights(state, path)
    _assert_identical(read_weights(path), before)
    _assert_identical(state, before)
    assert state["tied"] is weight  # the caller's tensors are untouched


def test_safetensors_content_is_recognised_whatever_the_name(tmp_path):
    state = {"w": torch.ones(2)}
    st = tmp_path / "w.safetensors"
    write_weights(state, str(st))
    renamed = tmp_path / "w.bin"
    renamed.write_bytes(st.read_bytes())
    _assert_identical(read_weights(str(renamed)), state)


def test_write_is_atomic_and_keeps_recorded_hashes_true(tmp_path):
    path = tmp_path / "model" / "decoder_epoch_20.pth"
    write_weights({"w": torch.zeros(2)}, str(path))
    record_sha256(str(path.parent), path.name, sha256_file(str(path)))
    write_weights({"w": torch.ones(2)}, str(path))
    assert read_sums(str(path.parent)) == {path.name: sha256_file(str(path))}
    assert torch.equal(read_weights(str(path))["w"], torch.ones(2))
    assert sorted(os.listdir(path.parent)) == [SUMS_NAME, path.name]  # no temporary left


def _one_line_error(path, match):
    with pytest.raises(FormatError) as info:
        read_weights(str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message and match in message
    return message


def test_unreadable_files_give_one_line_errors(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint at all")
    _one_line_error(garbage, "not a readable weights file")
    not_st = tmp_path / "garbage.safetensors"
    not_st.write_bytes(b"\x00" * 64)
    _one_line_error(not_st, "not a safetensors file")
    good = tmp_path / "good.safetensors"
    write_weights({"w": torch.randn(100)}, str(good))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-40])
    _one_line_error(truncated, "safetensors")
    history = tmp_path / "history_epoch_1.pth"
    torch.save({"train": {"epoch": [1], "loss": [0.5]}}, history)
    _one_line_error(history, "not a flat state dict of tensors")
    _one_line_error(tmp_path / "absent.pth", "not found")
    with pytest.raises(FormatError, match=r"cannot tell the weights format .*w\.npz"):
        write_weights({"w": torch.ones(1)}, str(tmp_path / "w.npz"))


def test_missing_safetensors_library_says_what_to_install(tmp_path, monkeypatch):
    st = tmp_path / "w.safetensors"
    write_weights({"w": torch.ones(1)}, str(st))
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    for action in (lambda: read_weights(str(st)),
                   lambda: write_weights({"w": torch.ones(1)}, str(tmp_path / "x.safetensors"))):
        with pytest.raises(FormatError) as info:
            action()
        message = str(info.value)
        assert "\n" not in message and 'pip install -e ".[hub]"' in message
        assert "pip install safetensors" in message
    torch.save({"w": torch.ones(1)}, tmp_path / "plain.pth")  # .pth files need nothing more
    assert torch.equal(read_weights(str(tmp_path / "plain.pth"))["w"], torch.ones(1))
