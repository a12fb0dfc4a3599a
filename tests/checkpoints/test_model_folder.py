""".pth <-> .safetensors from the command line, and model folders: written by
``models save`` / ``save_pretrained``, read by ``Segmenter.from_pretrained`` (a
folder, or a Hub repo id from a Hub cache made here, offline) and by test.py
with the folder as DIR. No network: the Hub cache is built on disk."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from _support import CFG, make_tiny_checkpoint, tiny_opts
from mit_semseg.benchmark.harness import write_rule_checkpoint
from mit_semseg.checkpoints.ledger import SUMS_NAME, read_sums, sha256_file
from mit_semseg.checkpoints.formats import read_weights
from mit_semseg.checkpoints.hub import HubError
from mit_semseg.checkpoints.released import RELEASED_MODELS
from mit_semseg.commands import main
from mit_semseg.config import load_cfg
from mit_semseg.inference import Segmenter
from mit_semseg.inference.model_folder import ModelFolderError, save_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAME = "ade20k-mobilenetv2dilated-c1_deepsup"
PRESET = os.path.join(ROOT, RELEASED_MODELS[NAME].config)
SMALL = ["DATASET.imgSizes", "(48,)", "TEST.workers", "0"]
REPO = "mit-semseg-tests/ade20k-mobilenetv2dilated-c1_deepsup"
EVALUATION = {"checkpoint": "epoch_20.pth", "mean_iou": 0.3125, "pixel_accuracy": 0.75,
              "mean_class_accuracy": 0.5, "num_images": 3, "imgSizes": [48], "flip": False}


def _bits(tensor):
    return tensor.reshape(-1).view(torch.uint8) if tensor.numel() else tensor.reshape(-1)


def _assert_identical(got, want):
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(_bits(got[key]),
                                                                 _bits(want[key])), key


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (44, 60, 3), dtype=np.uint8)).save(path)
    return str(path)


def _test_py(capsys, photo, out, *args):
    """test.py in this process; returns the image | prediction PNG as an array."""
    code = main(["test", "--imgs", photo, "--gpu", "cpu", "TEST.result", str(out),
                 *map(str, args)])
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    return np.asarray(Image.open(os.path.join(out, "photo.png")))


# ----------------------------------------------------------------------------- convert

def test_pth_safetensors_pth_round_trip_is_bit_identical_with_the_same_labels(
        tmp_path, photo, capsys):
    pth_dir = make_tiny_checkpoint(tmp_path / "pth")
    st_dir, back_dir = tmp_path / "st", tmp_path / "back"
    for part in ("encoder", "decoder"):
        st = st_dir / f"{part}_epoch_1.safetensors"
        assert main(["models", "convert", f"{pth_dir}/{part}_epoch_1.pth", str(st)]) == 0
        assert main(["models", "convert", str(st), str(back_dir / f"{part}_epoch_1.pth")]) == 0
        original = torch.load(f"{pth_dir}/{part}_epoch_1.pth", weights_only=True)
        _assert_identical(read_weights(str(st)), original)
        _assert_identical(torch.load(back_dir / f"{part}_epoch_1.pth", weights_only=True),
                          original)
    assert "tensors" in capsys.readouterr().out

    want = _test_py(capsys, photo, tmp_path / "o1", "--cfg", CFG, *tiny_opts(pth_dir))
    for folder, checkpoint in ((st_dir, "epoch_1.safetensors"),
                               (st_dir, "epoch_1.pth"),  # the .pth name finds its twin
                               (back_dir, "epoch_1.pth")):
        got = _test_py(capsys, photo, tmp_path / f"o_{folder.name}_{checkpoint}", "--cfg", CFG,
                       *tiny_opts(folder), "TEST.checkpoint", checkpoint)
        assert np.array_equal(got, want), (folder, checkpoint)
    probs = [Segmenter.from_config(CFG, opts=tiny_opts(d), device="cpu").predict(photo, True)[1]
             for d in (pth_dir, st_dir)]
    assert torch.equal(probs[0], probs[1])


def test_convert_errors_are_one_line(tmp_path, capsys):
    assert main(["models", "convert", str(tmp_path / "absent.pth"), str(tmp_path / "x.st")]) == 1
    assert capsys.readouterr().err == f"error: weights file not found: {tmp_path / 'absent.pth'}\n"
    torch.save({"w": torch.ones(1)}, tmp_path / "w.pth")
    assert main(["models", "convert", str(tmp_path / "w.pth"), str(tmp_path / "w.npz")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot tell the weights format" in err


# ----------------------------------------------------------------------------- released layout

@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """(ckpt folder with the preset's .pth files, model folder made from them)."""
    root = tmp_path_factory.mktemp("released")
    ckpt = root / "ckpt" / NAME
    write_rule_checkpoint(load_cfg(PRESET), str(ckpt))
    evaluation = root / "eval_epoch_20.json"
    evaluation.write_text(json.dumps(EVALUATION))
    folder = root / "models" / NAME
    assert main(["models", "save", "--out", str(folder), "--released", NAME, "--checkpoint-dir",
                 str(ckpt), "--eval", str(evaluation)]) == 0
    return ckpt, folder


def test_released_model_folder_layout(released, capsys):
    ckpt, folder = released
    assert sorted(os.listdir(folder)) == sorted([
        "README.md", SUMS_NAME, "classes.csv", "config.yaml", "decoder.safetensors",
        "encoder.safetensors", "evaluation.json", "preprocessing.json"])
    for part in ("encoder", "decoder"):
        _assert_identical(read_weights(str(folder / f"{part}.safetensors")),
                          torch.load(ckpt / f"{part}_epoch_20.pth", weights_only=True))
    weights = [f"{p}.safetensors" for p in ("encoder", "decoder")]
    assert read_sums(str(folder)) == {w: sha256_file(str(folder / w)) for w in weights}
    cfg = load_cfg(str(folder / "config.yaml"))
    assert (cfg.MODEL.arch_encoder, cfg.MODEL.arch_decoder, cfg.DATASET.num_class) == \
        ("mobilenetv2dilated", "c1_deepsup", 150)
    assert (cfg.DIR, cfg.DATASET.class_table) == (".", "")  # ADE20K's table, the default
    classes = (folder / "classes.csv").read_text().splitlines()
    assert classes[0] == "Idx,Name,R,G,B" and classes[1].startswith("1,wall,")
    assert len(classes) == 151
    pre = json.loads((folder / "preprocessing.json").read_text())
    assert pre["imgSizes"] == [300, 375, 450, 525, 600] and pre["num_class"] == 150
    assert json.loads((folder / "evaluation.json").read_text()) == EVALUATION
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: mit_semseg\n") and f"# {NAME}" in card
    assert "| Mean IoU | 31.25% |" in card and "| Pixel accuracy | 75.00% |" in card
    assert "Segmenter.from_pretrained(" in card and "python test.py" in card
    assert main(["pretrained", "--verify", str(folder)]) == 0
    assert "2 file(s) match" in capsys.readouterr().out


def _hub_cache(tmp_path, folder, repo=REPO):
    """A Hugging Face Hub cache holding ``folder`` as the main revision of ``repo``, in
    the layout huggingface_hub writes (blobs, snapshot symlinks, refs)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    storage = tmp_path / "hub-cache" / ("models--" + repo.replace("/", "--"))
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    (storage / "blobs").mkdir()
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in os.listdir(folder):
        blob = storage / "blobs" / sha256_file(str(folder / name))
        shutil.copyfile(folder / name, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    return str(tmp_path / "hub-cache"), str(snapshot)


def _probs(seg, photo):
    labels, probs = seg.predict(photo, return_probs=True, imgSizes=[48])
    return labels, probs


def test_from_pretrained_with_and_without_huggingface_hub(released, photo, tmp_path,
                                                          monkeypatch):
    ckpt, folder = released
    want = _probs(Segmenter.from_config(PRESET, checkpoint_dir=str(ckpt), device="cpu"), photo)

    # without huggingface_hub: a folder works the same, a repo id says what to install
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "huggingface_hub", None)
        seg = Segmenter.from_pretrained(str(folder), device="cpu")
        got = _probs(seg, photo)
        assert np.array_equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert seg.names[0] == "wall"
        with pytest.raises(HubError) as info:
            Segmenter.from_pretrained(REPO, device="cpu")
        assert "\n" not in str(info.value) and 'pip install -e ".[hub]"' in str(info.value)
        assert REPO in str(info.value)

    # with huggingface_hub, offline: the repo id comes from the Hub cache
    cache, snapshot = _hub_cache(tmp_path, folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seg = Segmenter.from_pretrained(REPO, cache_dir=cache, device="cpu")
    got = _probs(seg, photo)
    assert np.array_equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert seg.engine is not None and os.path.samefile(seg._source[0].DIR, snapshot)
    with pytest.raises(HubError) as info:
        Segmenter.from_pretrained("mit-semseg-tests/not-cached", cache_dir=cache, device="cpu")
    message = str(info.value)
    assert "\n" not in message and "not-cached" in message and "HF_HUB_OFFLINE" in message


def test_models_fetch_prints_the_cached_folder(released, tmp_path, monkeypatch, capsys):
    cache, snapshot = _hub_cache(tmp_path, released[1])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["models", "fetch", REPO, "--cache-dir", cache]) == 0
    assert capsys.readouterr().out.strip() == snapshot
    assert main(["models", "fetch", str(tmp_path / "nothing")]) == 1
    assert "model folder not found" in capsys.readouterr().err


def test_test_py_on_the_folder_equals_the_pth_path(released, photo, tmp_path, capsys):
    ckpt, folder = released
    want = _test_py(capsys, photo, tmp_path / "pth", "--cfg", PRESET, "DIR", ckpt, *SMALL)
    got = _test_py(capsys, photo, tmp_path / "folder", "--cfg", folder / "config.yaml",
                   "DIR", folder, *SMALL)
    assert np.array_equal(got, want)


# ----------------------------------------------------------------------------- mismatches

def _one_line(exc_info, *parts):
    message = str(exc_info.value)
    assert "\n" not in message, message
    for part in parts:
        assert str(part) in message, (part, message)
    return message


def test_150_class_folder_into_a_6_class_config_names_both(released, tmp_path):
    folder = released[1]
    with pytest.raises(ModelFolderError) as info:
        Segmenter.from_pretrained(str(folder), opts=["DATASET.num_class", "6"], device="cpu")
    _one_line(info, folder, folder / "config.yaml", "DATASET.num_class 150",
              "DATASET.num_class 6", "overrides DATASET.num_class 6")
    six = tmp_path / "six.yaml"
    six.write_text(open(PRESET).read().replace("num_class: 150", "num_class: 6"))
    with pytest.raises(ModelFolderError) as info:
        Segmenter.from_pretrained(str(folder), config=str(six), device="cpu")
    _one_line(info, folder, six, "DATASET.num_class 150", "DATASET.num_class 6")


def test_folder_whose_weights_do_not_match_its_config_names_both(released, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(released[1], bad)
    config = bad / "config.yaml"
    config.write_text(config.read_text().replace("num_class: 150", "num_class: 6"))
    with pytest.raises(ModelFolderError) as info:
        Segmenter.from_pretrained(str(bad), device="cpu")
    _one_line(info, f"model folder {bad}", config, "DATASET.num_class 6",
              bad / "decoder.safetensors", "conv_last")
    # test.py with that folder as DIR: one line naming the weights file and the config key
    code = main(["test", "--imgs", str(tmp_path), "--cfg", str(config), "--gpu", "cpu",
                 "DIR", str(bad), "TEST.workers", "0"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(err) == 1 and str(bad / "decoder.safetensors") in err[0]


def test_save_refuses_weights_that_do_not_fit_the_config(released, tmp_path, capsys):
    ckpt = released[0]
    code = main(["models", "save", "--out", str(tmp_path / "out"), "--cfg", PRESET,
                 "--checkpoint-dir", str(ckpt), "TEST.checkpoint", "epoch_20.pth",
                 "DATASET.num_class", "6"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert f"the weights do not fit {PRESET}" in err and "DATASET.num_class 6" in err
    assert str(ckpt / "decoder_epoch_20.pth") in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- Python API, Hub

def test_segmenter_save_pretrained_round_trip(tmp_path, photo):
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    table = tmp_path / "my_classes.csv"
    table.write_text("Idx,Name,R,G,B\n" + "".join(f"{k + 1},thing{k},{k},{2 * k},{3 * k}\n"
                                                   for k in range(8)))
    opts = [*tiny_opts(ckpt), "DATASET.class_table", str(table)]
    seg = Segmenter.from_config(CFG, opts=opts, device="cpu")
    folder = seg.save_pretrained(str(tmp_path / "tiny"), evaluation=EVALUATION)
    assert load_cfg(os.path.join(folder, "config.yaml")).DATASET.class_table == "classes.csv"
    assert "DATASET.class_table MODEL/classes.csv" in open(os.path.join(folder, "README.md")).read()
    os.remove(table)  # the folder carries its own copy
    again = Segmenter.from_pretrained(folder, device="cpu")
    assert np.array_equal(again(photo), seg(photo))
    assert again.names == seg.names and again.names[7] == "thing7"
    assert np.array_equal(again.colors, seg.colors)
    # saving again over a model folder is allowed; over anything else it is not
    assert save_pretrained(folder, CFG, opts=opts[:-2]) == folder
    assert not os.path.exists(os.path.join(folder, "evaluation.json"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ModelFolderError, match="not a model folder"):
        seg.save_pretrained(str(tmp_path / "other"))


def test_push_to_hub_checks_then_uploads(released, tmp_path, monkeypatch, capsys):
    hub = pytest.importorskip("huggingface_hub")
    calls = []

    class FakeApi:
        def __init__(self, **kwargs):
            calls.append(("init", kwargs.get("token")))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs.get("private")))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs["repo_id"], kwargs["folder_path"]))
            return type("Info", (), {"commit_url": f"https://hub.example/{kwargs['repo_id']}"})()

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    folder = released[1]
    assert main(["models", "push", str(folder), REPO, "--private", "--token", "t"]) == 0
    assert calls == [("init", "t"), ("create_repo", REPO, True),
                     ("upload_folder", REPO, str(folder))]
    assert f"https://hub.example/{REPO}" in capsys.readouterr().out

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    data = bytearray((bad / "encoder.safetensors").read_bytes())
    data[-1] ^= 0x01
    (bad / "encoder.safetensors").write_bytes(bytes(data))
    calls.clear()
    assert main(["models", "push", str(bad), REPO]) == 1
    assert "SHA-256 mismatch" in capsys.readouterr().err and calls == []


def test_a_model_folder_as_dir_for_from_config_and_export(tmp_path, photo, capsys):
    """What the web demo (Segmenter.from_config with checkpoint_dir) and the ONNX
    export do with --cfg FOLDER/config.yaml --checkpoint-dir FOLDER."""
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    folder = str(tmp_path / "tiny")
    save_pretrained(folder, CFG, opts=tiny_opts(ckpt))
    config = os.path.join(folder, "config.yaml")
    want = Segmenter.from_config(CFG, opts=tiny_opts(ckpt), device="cpu")(photo)
    got = Segmenter.from_config(config, checkpoint_dir=folder, device="cpu")(photo)
    assert np.array_equal(got, want)
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    onnx_path = tmp_path / "tiny.onnx"
    assert main(["export", "--cfg", config, "--checkpoint-dir", folder, "--onnx",
                 str(onnx_path)]) == 0, capsys.readouterr().err[-2000:]
    assert "self-check ok" in capsys.readouterr().out
