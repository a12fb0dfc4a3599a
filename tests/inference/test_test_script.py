"""test.py on a folder with nested subfolders, mixed extensions and modes and a
corrupt file: one output per good image, one clear line for the bad one, exit 0."""
import os

import numpy as np
from PIL import Image

from _support import CFG, make_tiny_checkpoint, run_script, tiny_opts


def write_inputs(root):
    rng = np.random.default_rng(0)

    def rgb(h, w):
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    os.makedirs(root / "sub" / "deeper")
    rgb(50, 70).save(root / "a.JPG")
    rgb(60, 44).save(root / "a.png")                       # same stem as a.JPG
    rgb(45, 45).save(root / "sub" / "b.jpeg")
    rgb(30, 52).save(root / "sub" / "a.png")               # same name, other folder
    Image.fromarray(rng.integers(0, 256, (40, 55), dtype=np.uint8), "L").save(root / "sub" / "gray.png")
    Image.fromarray(rng.integers(0, 256, (52, 48, 4), dtype=np.uint8), "RGBA").save(
        root / "sub" / "deeper" / "rgba.png")
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    (root / "notes.txt").write_text("not an image")


def test_folder_with_mixed_inputs(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    imgs = tmp_path / "imgs"
    write_inputs(imgs)
    out_dir = tmp_path / "out"
    res = run_script("test.py", "--imgs", imgs, "--cfg", CFG, "--gpu", "-1",
                     *tiny_opts(ckpt), "TEST.result", out_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    written = sorted(os.path.relpath(os.path.join(d, f), out_dir)
                     for d, _, files in os.walk(out_dir) for f in files)
    assert written == sorted(["a.JPG.png", "a.png.png", os.path.join("sub", "a.png"),
                              os.path.join("sub", "b.png"), os.path.join("sub", "gray.png"),
                              os.path.join("sub", "deeper", "rgba.png")])
    # image | prediction, at the input's size
    vis = np.asarray(Image.open(out_dir / "sub" / "deeper" / "rgba.png"))
    assert vis.shape == (52, 96, 3)
    # one clear line naming the unreadable file
    bad = [line for line in res.stderr.splitlines() if "broken.jpg" in line]
    assert len(bad) == 1 and "Skipping unreadable image" in bad[0] and "cannot read" in bad[0]
    assert "Traceback" not in res.stderr
    # predicted classes with percentages, as the original prints them
    assert res.stdout.count("Predictions in [") == 6
    assert "% " not in res.stdout and "  class_" in res.stdout
    assert "6 image(s) written" in res.stdout and "1 unreadable skipped" in res.stdout


def test_single_file_and_odgt_list(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 64, 3), 90, np.uint8)).save(photo)
    # the output would be photo.png in the same folder: the input is never overwritten
    res = run_script("test.py", "--imgs", photo, "--cfg", CFG, "--gpu", "cpu",
                     *tiny_opts(ckpt), "TEST.result", tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert np.asarray(Image.open(photo)).shape == (40, 64, 3)
    assert np.asarray(Image.open(tmp_path / "photo_seg.png")).shape == (40, 128, 3)

    odgt = tmp_path / "list.odgt"
    odgt.write_text('{"fpath_img": "photo.png"}\n{"fpath_img": "missing.jpg"}\n')
    res = run_script("test.py", "--imgs", odgt, "--cfg", CFG, "--gpu", "cpu",
                     *tiny_opts(ckpt), "TEST.result", tmp_path / "from_list")
    assert res.returncode == 0, res.stderr[-3000:]
    assert os.listdir(tmp_path / "from_list") == ["photo.png"]
    assert "missing.jpg: image file not found" in res.stderr


def test_no_images_is_an_error(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    (tmp_path / "empty").mkdir()
    res = run_script("test.py", "--imgs", tmp_path / "empty", "--cfg", CFG, "--gpu", "cpu",
                     *tiny_opts(ckpt))
    assert res.returncode == 1 and "no images" in res.stderr
