"""Reproducible files: the same weights saved twice, in this process and in a
fresh one with another hash seed, give byte-identical ``.safetensors`` and ``.pth`` files and
``SHA256SUMS`` ledgers, for every writer: a training run's epoch files (both
``TRAIN.save_format`` values), ``models convert`` both ways and a model folder
(``save_pretrained``). The safetensors library writes its metadata in a random
order per process (safetensors issue #584), so the checks that the header comes
out sorted do not depend on luck."""
import json
import os
import struct
import subprocess
import sys

import pytest
import torch

from _support import CFG, ROOT
from mit_semseg.checkpoints import formats
from mit_semseg.checkpoints.formats import read_weights, write_weights
from mit_semseg.checkpoints.ledger import SUMS_NAME, read_sums, record_sha256, sha256_file

pytestmark = pytest.mark.usefixtures("one_thread")

OPTS = ["MODEL.arch_encoder", "mobilenetv2dilated", "MODEL.arch_decoder", "c1",
        "MODEL.fc_dim", "320", "MODEL.pretrained", "False", "DATASET.num_class", "4",
        "DATASET.class_table", ""]

# What one process saves, from the weights in SRC, into OUT.
_SAVE_ALL = r"""
import os, sys
import torch
from mit_semseg.checkpoints.files import atomic_save
from mit_semseg.checkpoints.formats import write_weights
from mit_semseg.checkpoints.ledger import record_sha256
from mit_semseg.commands import main
from mit_semseg.models.folder import save_pretrained

src, out, cfg, *opts = ARGS
# models convert, both ways
convert = os.path.join(out, "convert")
safe = f"{convert}/encoder.safetensors"
assert main(["models", "convert", f"{src}/encoder_epoch_1.pth", safe]) == 0
assert main(["models", "convert", safe, f"{convert}/encoder.pth"]) == 0
# a run's epoch files as TRAIN.save_format writes them (pth: atomic_save,
# safetensors: write_weights), in a folder whose SHA256SUMS lists them
run = os.path.join(out, "run")
os.makedirs(run)
for name in ("encoder_epoch_1.pth", "encoder_epoch_1.safetensors"):
    record_sha256(run, name, "0" * 64)
state = torch.load(f"{src}/encoder_epoch_1.pth", weights_only=True)
atomic_save(state, os.path.join(run, "encoder_epoch_1.pth"))
write_weights(state, os.path.join(run, "encoder_epoch_1.safetensors"))
# a model folder
save_pretrained(os.path.join(out, "folder"), cfg, opts=opts, checkpoint_dir=src,
                checkpoint="epoch_1.pth")
"""


def _tree(root):
    """{relative path: bytes} of every file under ``root``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _header(path):
    with open(path, "rb") as fh:
        size = struct.unpack("<Q", fh.read(8))[0]
        return fh.read(size)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A small run folder: encoder/decoder_epoch_1.pth of mobilenetv2dilated + c1."""
    from mit_semseg.models import ModelBuilder
    folder = tmp_path_factory.mktemp("src")
    torch.manual_seed(0)
    encoder = ModelBuilder.build_encoder("mobilenetv2dilated", 320, "", pretrained=False)
    decoder = ModelBuilder.build_decoder("c1", 320, 4, "")
    torch.save(encoder.state_dict(), folder / "encoder_epoch_1.pth")
    torch.save(decoder.state_dict(), folder / "decoder_epoch_1.pth")
    return folder


def test_two_processes_save_the_same_bytes(weights, tmp_path, capsys):
    args = [str(weights), str(tmp_path / "out1"), CFG, *OPTS]
    exec(_SAVE_ALL, {"ARGS": args})  # here
    capsys.readouterr()
    args[1] = str(tmp_path / "out2")
    env = dict(os.environ, PYTHONHASHSEED="1" if os.environ.get("PYTHONHASHSEED") != "1" else "2",
               OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", f"ARGS = {args!r}\n" + _SAVE_ALL], env=env,
                          capture_output=True, text=True, timeout=300)  # in a fresh process
    assert done.returncode == 0, done.stderr[-2000:]
    first, second = _tree(tmp_path / "out1"), _tree(tmp_path / "out2")
    assert sorted(first) == sorted(second)
    assert {"folder/encoder.safetensors", "folder/decoder.safetensors", f"folder/{SUMS_NAME}",
            "convert/encoder.safetensors", "convert/encoder.pth", f"run/{SUMS_NAME}",
            "run/encoder_epoch_1.safetensors", "run/encoder_epoch_1.pth"} <= set(first)
    differ = [name for name in first if first[name] != second[name]]
    assert differ == []
    # the ledgers hold the true hashes, in name order
    for folder in ("run", "folder"):
        sums = read_sums(str(tmp_path / "out1" / folder))
        assert list(sums) == sorted(sums) and len(sums) == 2
        assert all(sums[n] == sha256_file(str(tmp_path / "out1" / folder / n)) for n in sums)
    # every safetensors header lists its metadata sorted, whatever the library's order
    for name in first:
        if name.endswith(".safetensors"):
            meta = json.loads(_header(str(tmp_path / "out1" / name)))["__metadata__"]
            assert list(meta) == sorted(meta) == ["format", "mit_semseg.key_order"], name


def test_unsorted_metadata_is_sorted_in_place(tmp_path):
    """A header written with its metadata in the other order (as the library may do
    in another process) is put in sorted order at the same length; tensors, their key
    order and every metadata value are kept."""
    state = {"z": torch.arange(5, dtype=torch.int64), "a": torch.ones(2, 3)}
    path = tmp_path / "w.safetensors"
    write_weights(state, str(path))
    sorted_bytes = path.read_bytes()
    raw = _header(str(path))
    header = json.loads(raw)
    header["__metadata__"] = dict(sorted(header["__metadata__"].items(), reverse=True))
    unsorted = json.dumps(header, separators=(",", ":")).encode().ljust(len(raw))  # padded
    assert len(unsorted) == len(raw) and unsorted != raw
    path.write_bytes(sorted_bytes[:8] + unsorted + sorted_bytes[8 + len(raw):])
    formats._sort_metadata(str(path))
    assert path.read_bytes() == sorted_bytes
    got = read_weights(str(path))
    assert list(got) == ["z", "a"] and all(torch.equal(got[k], state[k]) for k in state)


def test_pth_bytes_do_not_depend_on_the_temporary_name(tmp_path):
    """write_weights writes .pth through a stream: two saves of the same state give the
    same bytes (torch.save to a path would name the zip's folder after the random
    temporary file)."""
    state = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3)}
    write_weights(state, str(tmp_path / "a.pth"))
    write_weights(state, str(tmp_path / "b.pth"))
    assert (tmp_path / "a.pth").read_bytes() == (tmp_path / "b.pth").read_bytes()
    assert list(read_weights(str(tmp_path / "a.pth"))) == ["w", "n"]


def test_ledger_is_sorted_whatever_the_order_of_records(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    names = ["encoder.safetensors", "decoder.safetensors", "b.pth"]
    for folder, order in ((one, names), (two, names[::-1])):
        folder.mkdir()
        for i, name in enumerate(order):
            record_sha256(str(folder), name, f"{names.index(name):064x}")
    assert (one / SUMS_NAME).read_bytes() == (two / SUMS_NAME).read_bytes()
    lines = (one / SUMS_NAME).read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == sorted(names)
    # a ledger written by hand in another order is put in order at the next record
    (two / SUMS_NAME).write_text("".join(reversed([line + "\n" for line in lines])))
    record_sha256(str(two), "b.pth", f"{names.index('b.pth'):064x}")
    assert (two / SUMS_NAME).read_bytes() == (one / SUMS_NAME).read_bytes()
