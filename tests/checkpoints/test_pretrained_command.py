"""``python -m mit_semseg pretrained NAME --mirror URL`` end to end, against a real
HTTP server on 127.0.0.1 serving weights made here (the released MobileNetV2 +
C1 preset filled by the benchmark's weight rule). The MIT host is replaced by a
port nobody listens on, so no test touches the network."""
import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from _server import closed_url, site  # noqa: F401 (fixtures)
from mit_semseg.benchmark.harness import write_rule_checkpoint
from mit_semseg.checkpoints import download as D
from mit_semseg.checkpoints import formats, ledger, released as R
from mit_semseg.checkpoints.released import RELEASED_MODELS
from mit_semseg.commands import main
from mit_semseg.config import load_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAME = "ade20k-mobilenetv2dilated-c1_deepsup"
PRESET = os.path.join(ROOT, RELEASED_MODELS[NAME].config)
FILES = ("encoder_epoch_20.pth", "decoder_epoch_20.pth")


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """{file name: bytes} of a stand-in for the released model."""
    folder = tmp_path_factory.mktemp("released")
    write_rule_checkpoint(load_cfg(PRESET), str(folder))
    return {name: (folder / name).read_bytes() for name in FILES}


@pytest.fixture(autouse=True)
def _mit_host_down(closed_url, monkeypatch):  # noqa: F811
    """The MIT host: a refused connection (first source failing); no mirrors from the
    environment."""
    monkeypatch.setattr(D, "MIT_HOST", closed_url)
    monkeypatch.delenv(D.MIRRORS_ENV, raising=False)


def _serve(site, released, prefix="/mirror"):  # noqa: F811
    for name, data in released.items():
        site.files[f"{prefix}/{NAME}/{name}"] = data
    return site.url + prefix + "/"


def _pretrained(capsys, *args, quiet=True):
    code = main(["pretrained", NAME, *(["--quiet"] if quiet else []), *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def test_cut_download_resumes_and_ends_with_the_right_hash(site, released, tmp_path,  # noqa: F811
                                                           capsys):
    mirror = _serve(site, released)
    site.cut_once.add(f"/mirror/{NAME}/{FILES[0]}")
    code, out, err = _pretrained(capsys, "--dest", tmp_path, "--mirror", mirror)
    assert code == 0, err
    folder = tmp_path / NAME
    for name in FILES:
        assert (folder / name).read_bytes() == released[name]
    assert ledger.read_sums(str(folder)) == {name: _sha(released[name]) for name in FILES}
    size = len(released[FILES[0]])
    enc_requests = [r for r in site.requests if r[0].endswith(FILES[0])]
    assert enc_requests == [(f"/mirror/{NAME}/{FILES[0]}", None),
                            (f"/mirror/{NAME}/{FILES[0]}", f"bytes={size // 2}-")]
    assert f"use with: --cfg {RELEASED_MODELS[NAME].config}" in out
    assert sorted(os.listdir(folder)) == sorted([ledger.SUMS_NAME, *FILES])  # no .part left


def test_part_left_by_a_killed_run_is_resumed(site, released, tmp_path, capsys):  # noqa: F811
    mirror = _serve(site, released)
    folder = tmp_path / NAME
    folder.mkdir()
    half = len(released[FILES[1]]) // 3
    (folder / (FILES[1] + ".part")).write_bytes(released[FILES[1]][:half])
    code, _, err = _pretrained(capsys, "--dest", tmp_path, "--mirror", mirror)
    assert code == 0, err
    assert (folder / FILES[1]).read_bytes() == released[FILES[1]]
    assert (f"/mirror/{NAME}/{FILES[1]}", f"bytes={half}-") in site.requests


def test_first_sources_failing_fall_back_to_the_next(site, released, tmp_path,  # noqa: F811
                                                     capsys, monkeypatch):
    mirror = _serve(site, released)
    monkeypatch.setenv(D.MIRRORS_ENV, mirror)  # after the --mirror flags
    code, _, err = _pretrained(capsys, "--dest", tmp_path, "--mirror", site.url + "/empty/",
                               "--mirror", tmp_path / "no-such-folder", quiet=False)
    assert code == 0, err
    for name in FILES:
        assert (tmp_path / NAME / name).read_bytes() == released[name]
    # tried in order: MIT host (refused), the 404 mirror, the absent folder, then the variable's
    assert site.requests[:2] == [(f"/empty/{NAME}/{FILES[0]}", None),
                                 (f"/mirror/{NAME}/{FILES[0]}", None)]
    notes = [line for line in err.splitlines() if line.startswith("[mit_semseg]")]
    assert len(notes) == 6, err  # three failed sources per file, said as they fail
    assert "refused" in notes[0].lower() and "HTTP 404" in notes[1]
    assert "folder not found" in notes[2]


def test_wrong_bytes_are_refused_and_never_placed(site, released, tmp_path, capsys,  # noqa: F811
                                                  monkeypatch):
    good_sha = _sha(released[FILES[0]])
    bad = bytearray(released[FILES[0]])
    bad[len(bad) // 2] ^= 0x01
    site.files[f"/bad/{NAME}/{FILES[0]}"] = bytes(bad)
    monkeypatch.setattr(R, "_package_manifest", lambda: {f"{NAME}/{FILES[0]}": good_sha})
    code, _, err = _pretrained(capsys, "--dest", tmp_path, "--mirror", site.url + "/bad/")
    assert code == 1
    assert f"SHA-256 mismatch for {site.url}/bad/{NAME}/{FILES[0]}: expected {good_sha}, " \
           f"got {_sha(bytes(bad))}" in err
    assert not (tmp_path / NAME / FILES[0]).exists()
    assert [f for f in os.listdir(tmp_path / NAME) if f.startswith(FILES[0])] == []


def test_corrupted_file_is_refused_at_load_with_one_line_and_never_loaded(
        site, released, tmp_path, capsys, monkeypatch):  # noqa: F811
    mirror = _serve(site, released)
    assert _pretrained(capsys, "--dest", tmp_path, "--mirror", mirror)[0] == 0
    folder = tmp_path / NAME
    assert main(["pretrained", "--verify", str(folder)]) == 0
    assert "2 file(s) match SHA256SUMS" in capsys.readouterr().out

    path = folder / FILES[0]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    read = []
    real_read = formats._read_torch
    monkeypatch.setattr(formats, "_read_torch", lambda p, *a: read.append(p) or real_read(p, *a))
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 56, 3), 120, np.uint8)).save(photo)
    out_dir = tmp_path / "out"
    code = main(["test", "--imgs", str(photo), "--cfg", PRESET, "--gpu", "cpu", "DIR",
                 str(folder), "TEST.result", str(out_dir), "DATASET.imgSizes", "(48,)",
                 "TEST.workers", "0"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1, err[-2000:]
    assert errors[0] == (f"error: SHA-256 mismatch for {path}: expected "
                         f"{_sha(released[FILES[0]])}, got {_sha(bytes(data))}; the file was "
                         f"renamed to {path}.corrupt")
    assert str(path) not in read  # refused before any byte was unpickled
    assert not path.exists() and (folder / (FILES[0] + ".corrupt")).exists()
    assert not out_dir.exists() or os.listdir(out_dir) == []
    # the next fetch replaces it with the right bytes
    assert _pretrained(capsys, "--dest", tmp_path, "--mirror", mirror)[0] == 0
    assert path.read_bytes() == released[FILES[0]]


def test_verify_refuses_a_changed_file(site, released, tmp_path, capsys):  # noqa: F811
    mirror = _serve(site, released)
    assert _pretrained(capsys, "--dest", tmp_path, "--mirror", mirror)[0] == 0
    path = tmp_path / NAME / FILES[1]
    path.write_bytes(path.read_bytes()[:-1])
    assert main(["pretrained", "--verify", str(tmp_path / NAME)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"SHA-256 mismatch for {path}" in err
    assert main(["pretrained", "--verify", str(tmp_path)]) == 1
    assert "no SHA256SUMS" in capsys.readouterr().err


def test_offline_lists_every_source_tried(closed_url, tmp_path, capsys):  # noqa: F811
    mirror = closed_url.replace("/models", "/mirror")
    code, out, err = _pretrained(capsys, "--dest", tmp_path, "--mirror", mirror)
    assert code == 1 and out == ""
    message = err[err.index("error: "):]
    lines = message.splitlines()
    dest = tmp_path / NAME / FILES[0]
    assert lines[0] == f"error: could not fetch {NAME}/{FILES[0]} to {dest}; tried 2 source(s):"
    assert lines[1].startswith(f"  1. {closed_url}: {closed_url}/{NAME}/{FILES[0]}: ")
    assert lines[2].startswith(f"  2. {mirror}: {mirror}/{NAME}/{FILES[0]}: ")
    assert "refused" in lines[1].lower() and "refused" in lines[2].lower()
    assert "seems to be offline" in message and D.MIRRORS_ENV in lines[-1]
    assert str(dest) in lines[-1] and "Traceback" not in err
    assert os.listdir(tmp_path / NAME) == []  # nothing half-written


def test_cfg_mirrors_are_passed_to_the_download(site, released, tmp_path, capsys):  # noqa: F811
    """--cfg with MODEL.mirrors naming a local folder: the files come from there, after
    the refused MIT host and the --mirror that lacks them."""
    mirror = tmp_path / "mirror" / NAME
    mirror.mkdir(parents=True)
    for name, data in released.items():
        (mirror / name).write_bytes(data)
    cfg = tmp_path / "mirrors.yaml"
    cfg.write_text(f"MODEL:\n  mirrors: ['{mirror.parent}']\n")
    code, out, err = _pretrained(capsys, "--dest", tmp_path / "ckpt", "--cfg", cfg,
                                 "--mirror", site.url + "/empty/")
    assert code == 0, err
    for name in FILES:
        assert (tmp_path / "ckpt" / NAME / name).read_bytes() == released[name]
    assert [path for path, _ in site.requests] == [f"/empty/{NAME}/{name}" for name in FILES]
    # the next call without --cfg does not remember those mirrors
    code, _, err = _pretrained(capsys, "--dest", tmp_path / "again")
    assert code == 1 and str(mirror.parent) not in err
