"""Data pipeline: odgt parsing, train batches, val/test tensors, worker
streams, bad inputs and image modes. All data is made in tmp_path."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from mit_semseg.config import cfg
from mit_semseg.data.datasets import DatasetError, TrainDataset, ValDataset, worker_init_fn
from mit_semseg.data.datasets import TestDataset as ImageListDataset  # a Test* name would be collected
from mit_semseg.data.io import read_annotation, read_image

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def make_opt(**overrides):
    opt = cfg.DATASET.clone()
    opt.defrost()
    opt.num_class = 10
    opt.imgSizes = (32, 48)
    opt.imgMaxSize = 80
    opt.padding_constant = 8
    opt.segm_downsampling_rate = 8
    opt.random_flip = False
    for key, value in overrides.items():
        setattr(opt, key, value)
    return opt


def random_rgb(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_sample(root, name, rgb, labels, label_mode=None):
    """Write images/<name>.png and annotations/<name>.png; return the odgt record."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    img_rel, seg_rel = f"images/{name}.png", f"annotations/{name}.png"
    Image.fromarray(rgb).save(os.path.join(root, img_rel))
    seg = Image.fromarray(labels) if label_mode is None else Image.fromarray(labels).convert(label_mode)
    seg.save(os.path.join(root, seg_rel))
    return {"fpath_img": img_rel, "fpath_segm": seg_rel,
            "width": int(rgb.shape[1]), "height": int(rgb.shape[0])}


def write_odgt(path, records):
    with open(path, "w") as f:
        for rec in records:
            f.write((rec if isinstance(rec, str) else json.dumps(rec)) + "\n")
    return str(path)


def round_up(x, p):
    return ((x - 1) // p + 1) * p


# --- transcriptions of the original toolkit's rules (used as expected values) ---

def original_normalize(pil_img):
    a = np.float32(np.array(pil_img)) / 255.
    return torch.from_numpy(((a - MEAN) / STD).transpose(2, 0, 1).copy())


def original_multiscale(img, sizes, max_size, pad):
    w0, h0 = img.size
    out = []
    for short in sizes:
        scale = min(short / float(min(h0, w0)), max_size / float(max(h0, w0)))
        th, tw = int(h0 * scale), int(w0 * scale)
        tw, th = round_up(tw, pad), round_up(th, pad)
        out.append(original_normalize(img.resize((tw, th), Image.BILINEAR)).unsqueeze(0))
    return out


def original_train_batch(img, seg, short, max_size, pad, rate):
    w0, h0 = img.size
    scale = min(short / min(h0, w0), max_size / max(h0, w0))
    w, h = int(w0 * scale), int(h0 * scale)
    bw, bh = round_up(w, pad), round_up(h, pad)
    images = torch.zeros(1, 3, bh, bw)
    labels = torch.zeros(1, bh // rate, bw // rate).long()
    img = img.resize((w, h), Image.BILINEAR)
    seg = seg.resize((w, h), Image.NEAREST)
    rounded = Image.new("L", (round_up(w, rate), round_up(h, rate)), 0)
    rounded.paste(seg, (0, 0))
    seg = rounded.resize((rounded.size[0] // rate, rounded.size[1] // rate), Image.NEAREST)
    small = torch.from_numpy(np.array(seg)).long() - 1
    images[0][:, :h, :w] = original_normalize(img)
    labels[0][:small.shape[0], :small.shape[1]] = small
    return images, labels


# --- odgt parsing ------------------------------------------------------------

def test_odgt_path_list_and_slicing(tmp_path):
    rng = np.random.default_rng(0)
    recs = [write_sample(tmp_path, f"s{i}", random_rgb(rng, 20, 30), np.ones((20, 30), np.uint8))
            for i in range(6)]
    odgt = write_odgt(tmp_path / "list.odgt", recs[:3] + [""] + recs[3:])  # blank line skipped
    opt = make_opt()
    assert ValDataset(str(tmp_path), odgt, opt).num_sample == 6
    assert len(ValDataset(str(tmp_path), recs, opt)) == 6
    assert ValDataset(str(tmp_path), odgt, opt, max_sample=4).list_sample == recs[:4]
    assert ValDataset(str(tmp_path), odgt, opt, start_idx=2, end_idx=5).list_sample == recs[2:5]
    opt_int = make_opt(imgSizes=40)  # a single int is accepted as one scale
    assert len(ValDataset(str(tmp_path), recs, opt_int)[0]["img_data"]) == 1
    with pytest.raises(DatasetError, match="no samples"):
        ValDataset(str(tmp_path), odgt, opt, start_idx=7, end_idx=9)


# --- train batches --------------------------------------------------------------

@pytest.mark.parametrize("size,short,max_size,pad,rate", [
    ((37, 53), 32, 80, 8, 8),     # landscape, odd sides
    ((61, 29), 40, 70, 8, 4),     # portrait, long side capped
    ((45, 45), 48, 100, 16, 8),   # square, upscaled
    ((50, 23), 24, 200, 32, 4),   # padding larger than rate
])
def test_train_batch_equals_original(tmp_path, size, short, max_size, pad, rate):
    h, w = size
    rng = np.random.default_rng(h * w)
    labels = rng.integers(0, 11, (h, w), dtype=np.uint8)
    rec = write_sample(tmp_path, "a", random_rgb(rng, h, w), labels)
    opt = make_opt(imgSizes=(short,), imgMaxSize=max_size, padding_constant=pad,
                   segm_downsampling_rate=rate)
    batch = TrainDataset(str(tmp_path), [rec], opt, batch_per_gpu=1, seed=0)[0]
    exp_img, exp_seg = original_train_batch(Image.open(tmp_path / rec["fpath_img"]).convert("RGB"),
                                            Image.open(tmp_path / rec["fpath_segm"]),
                                            short, max_size, pad, rate)
    assert batch["img_data"].dtype == torch.float32 and batch["seg_label"].dtype == torch.int64
    assert torch.equal(batch["img_data"], exp_img)
    assert torch.equal(batch["seg_label"], exp_seg)


def orientation_dataset(tmp_path, n_portrait=5, n_landscape=7):
    """Portrait images are labelled 1 (class 0), landscape ones 2 (class 1)."""
    rng = np.random.default_rng(1)
    recs = []
    for i in range(n_portrait + n_landscape):
        portrait = i < n_portrait
        short, long_ = int(rng.integers(20, 40)), int(rng.integers(41, 70))
        h, w = (long_, short) if portrait else (short, long_)
        recs.append(write_sample(tmp_path, f"o{i}", random_rgb(rng, h, w),
                                 np.full((h, w), 1 if portrait else 2, np.uint8)))
    return recs


def test_train_shapes_grouping_and_scale(tmp_path):
    recs = orientation_dataset(tmp_path)
    opt = make_opt(imgSizes=(24, 32, 40), imgMaxSize=60, padding_constant=8, segm_downsampling_rate=4)
    ds = TrainDataset(str(tmp_path), recs, opt, batch_per_gpu=3, seed=5, ignore_padding=True)
    assert len(ds) == int(1e10)
    seen_classes = set()
    for i in range(12):
        batch = ds[i]
        img, seg = batch["img_data"], batch["seg_label"]
        n, c, bh, bw = img.shape
        assert (n, c) == (3, 3) and bh % 8 == 0 and bw % 8 == 0
        assert seg.shape == (3, bh // 4, bw // 4)
        classes = set(seg.unique().tolist()) - {-1}
        assert len(classes) == 1  # one orientation per batch
        seen_classes |= classes
        portrait = classes == {0}
        # Every image's labelled extent follows its own scale: sampled rows/cols
        # k*4 + 2 inside the scaled image are labelled, the rest is padding (-1).
        extents = sorted(((seg[k] >= 0).sum(0).max().item(), (seg[k] >= 0).sum(1).max().item())
                         for k in range(3))
        for rows, cols in extents:
            if portrait:
                assert rows > cols
            else:
                assert rows <= cols
    assert seen_classes == {0, 1}


def test_train_scale_per_image(tmp_path):
    rng = np.random.default_rng(2)
    sizes = [(30, 50), (20, 64), (41, 45)]  # all landscape, different aspect
    recs = [write_sample(tmp_path, f"p{i}", random_rgb(rng, h, w), np.full((h, w), 3, np.uint8))
            for i, (h, w) in enumerate(sizes)]
    opt = make_opt(imgSizes=(40,), imgMaxSize=100, padding_constant=8, segm_downsampling_rate=4)
    ds = TrainDataset(str(tmp_path), recs, opt, batch_per_gpu=3, seed=0, ignore_padding=True)
    batch = ds[0]
    expected = {}
    for h, w in sizes:
        scale = min(40 / min(h, w), 100 / max(h, w))
        sh, sw = int(h * scale), int(w * scale)
        expected[(h, w)] = (len(range(2, sh, 4)), len(range(2, sw, 4)))
    got = sorted(((batch["seg_label"][k] >= 0).sum(0).max().item(),
                  (batch["seg_label"][k] >= 0).sum(1).max().item()) for k in range(3))
    assert got == sorted(expected.values())
    assert batch["img_data"].shape[2:] == (round_up(max(int(h * min(40 / min(h, w), 100 / max(h, w)))
                                                        for h, w in sizes), 8),
                                           round_up(max(int(w * min(40 / min(h, w), 100 / max(h, w)))
                                                        for h, w in sizes), 8))


def test_label_downsampling_alignment(tmp_path):
    # Scale 1 (short side == imgSizes), so the labels are only padded and
    # downsampled: cell (i, j) must hold the full-resolution label at its centre
    # pixel (8i + 4, 8j + 4); class boundaries are at known columns/rows.
    h, w = 40, 61
    yy, xx = np.mgrid[0:h, 0:w]
    full = (1 + (xx // 5) % 5 + 5 * ((yy // 7) % 2)).astype(np.uint8)
    rng = np.random.default_rng(3)
    rec = write_sample(tmp_path, "grid", random_rgb(rng, h, w), full)
    opt = make_opt(imgSizes=(40,), imgMaxSize=1000, padding_constant=8, segm_downsampling_rate=8)
    seg = TrainDataset(str(tmp_path), [rec], opt, seed=0)[0]["seg_label"][0]
    assert seg.shape == (5, 8)
    for i in range(5):
        for j in range(8):
            y, x = 8 * i + 4, 8 * j + 4
            want = int(full[y, x]) - 1 if (y < h and x < w) else -1
            assert seg[i, j].item() == want, (i, j)


def test_random_flip_moves_image_and_labels_together(tmp_path):
    h, w = 32, 48
    rng = np.random.default_rng(4)
    rgb = random_rgb(rng, h, w)
    full = (1 + np.mgrid[0:h, 0:w][1] // 6).astype(np.uint8)  # 8 vertical bands
    rec = write_sample(tmp_path, "f", rgb, full)
    opt = make_opt(imgSizes=(32,), imgMaxSize=1000, padding_constant=8, segm_downsampling_rate=8,
                   random_flip=True)
    ds = TrainDataset(str(tmp_path), [rec], opt, seed=0)
    plain = (original_normalize(Image.fromarray(rgb)),
             torch.from_numpy(full[4::8, 4::8].astype(np.int64) - 1))
    flipped = (original_normalize(Image.fromarray(rgb[:, ::-1].copy())),
               torch.from_numpy(full[:, ::-1][4::8, 4::8].astype(np.int64) - 1))
    kinds = set()
    for i in range(16):
        batch = ds[i]
        img, seg = batch["img_data"][0], batch["seg_label"][0]
        if torch.equal(img, plain[0]):
            assert torch.equal(seg, plain[1])
            kinds.add("plain")
        else:
            assert torch.equal(img, flipped[0]) and torch.equal(seg, flipped[1])
            kinds.add("flipped")
    assert kinds == {"plain", "flipped"}


def test_padding_label_zero_by_default_minus_one_with_ignore_padding(tmp_path):
    h, w = 70, 38  # scale 1 -> batch 80 x 48 (padding_constant 16), labels 20 x 12 (rate 4)
    rng = np.random.default_rng(5)
    rec = write_sample(tmp_path, "pad", random_rgb(rng, h, w), np.full((h, w), 4, np.uint8))
    opt = make_opt(imgSizes=(38,), imgMaxSize=1000, padding_constant=16, segm_downsampling_rate=4)
    default = TrainDataset(str(tmp_path), [rec], opt, seed=0)[0]["seg_label"][0]
    ignored = TrainDataset(str(tmp_path), [rec], opt, seed=0, ignore_padding=True)[0]["seg_label"][0]
    assert default.shape == ignored.shape == (20, 12)
    # rows 0..16 / cols 0..8 sample inside the image (4i + 2 < 70, 4j + 2 < 38): class 3
    for seg in (default, ignored):
        assert (seg[:17, :9] == 3).all()
        # row 17 / col 9 sample the per-image rounding pad: unlabeled in both modes
        assert (seg[17, :10] == -1).all() and (seg[:18, 9] == -1).all()
    # the batch's padded border: 0 (the original's), or -1 when ignored
    assert (default[18:] == 0).all() and (default[:, 10:] == 0).all()
    assert (ignored[18:] == -1).all() and (ignored[:, 10:] == -1).all()


def test_train_rejects_padding_below_downsampling_rate(tmp_path):
    opt = make_opt(padding_constant=4, segm_downsampling_rate=8)
    rec = {"fpath_img": "a.png", "fpath_segm": "a.png", "width": 4, "height": 4}
    with pytest.raises(ValueError, match="padding_constant"):
        TrainDataset(str(tmp_path), [rec], opt)


# --- worker streams -----------------------------------------------------------------

def _unwrap(batch):
    return batch[0]


def identity_dataset(tmp_path):
    """12 landscape images, image i labelled i+1 everywhere (batch = its label set)."""
    rng = np.random.default_rng(6)
    return [write_sample(tmp_path, f"w{i}", random_rgb(rng, 20, 30), np.full((20, 30), i + 1, np.uint8))
            for i in range(12)]


def take(ds, n, workers):
    loader = torch.utils.data.DataLoader(ds, batch_size=1, shuffle=False, num_workers=workers,
                                         collate_fn=_unwrap, worker_init_fn=worker_init_fn)
    it = iter(loader)
    return [next(it) for _ in range(n)]


def ids(batch):
    return tuple(batch["seg_label"][:, 0, 0].tolist())


def test_workers_draw_distinct_reproducible_streams(tmp_path):
    recs = identity_dataset(tmp_path)
    opt = make_opt(num_class=12, imgSizes=(16, 24, 32), imgMaxSize=100, random_flip=True)

    def dataset(seed):
        return TrainDataset(str(tmp_path), recs, opt, batch_per_gpu=2, seed=seed)

    first = take(dataset(7), 8, workers=2)
    again = take(dataset(7), 8, workers=2)
    other = take(dataset(8), 8, workers=2)
    # DataLoader hands index i to worker i % 2
    w0, w1 = [ids(b) for b in first[0::2]], [ids(b) for b in first[1::2]]
    assert w0 != w1
    for a, b in zip(first, again):
        assert torch.equal(a["img_data"], b["img_data"]) and torch.equal(a["seg_label"], b["seg_label"])
    assert [ids(b) for b in first] != [ids(b) for b in other]
    # worker 0's stream is the single-process stream (worker id 0) ...
    assert [ids(b) for b in take(dataset(7), 4, workers=0)] == w0
    # ... and a worker restarts it even when the parent already drew from its copy
    used = dataset(7)
    used[0], used[1]
    assert [ids(b) for b in take(used, 8, workers=2)] == [ids(b) for b in first]


def test_each_worker_epoch_covers_the_list(tmp_path):
    recs = identity_dataset(tmp_path)
    ds = TrainDataset(str(tmp_path), recs, make_opt(num_class=12), batch_per_gpu=2, seed=1)
    seen = [i for k in range(6) for i in ids(ds[k])]
    assert sorted(seen) == list(range(12))


# --- val / test --------------------------------------------------------------------------

VAL_SIZES = [(37, 53), (101, 64), (45, 45), (23, 90)]


def test_val_tensors_equal_original(tmp_path):
    rng = np.random.default_rng(7)
    recs = [write_sample(tmp_path, f"v{i}", random_rgb(rng, h, w),
                         rng.integers(0, 11, (h, w), dtype=np.uint8))
            for i, (h, w) in enumerate(VAL_SIZES)]
    opt = make_opt(imgSizes=(32, 47, 64), imgMaxSize=90, padding_constant=8)
    ds = ValDataset(str(tmp_path), recs, opt)
    assert len(ds) == len(recs)
    for i, rec in enumerate(recs):
        out = ds[i]
        assert list(out) == ["img_ori", "img_data", "seg_label", "info"]
        img = Image.open(tmp_path / rec["fpath_img"]).convert("RGB")
        expected = original_multiscale(img, (32, 47, 64), 90, 8)
        assert len(out["img_data"]) == 3
        for got, want in zip(out["img_data"], expected):
            assert got.shape == want.shape and got.is_contiguous()
            assert torch.equal(got, want)
        labels = np.array(Image.open(tmp_path / rec["fpath_segm"]))
        assert out["seg_label"].dtype == torch.int64
        assert torch.equal(out["seg_label"], torch.from_numpy(labels).long().unsqueeze(0) - 1)
        assert np.array_equal(out["img_ori"], np.array(img))
        assert out["info"] == rec["fpath_img"]


def test_test_tensors_equal_original(tmp_path):
    rng = np.random.default_rng(8)
    paths = []
    for i, (h, w) in enumerate(VAL_SIZES):
        path = str(tmp_path / f"t{i}.jpg")
        Image.fromarray(random_rgb(rng, h, w)).save(path, quality=90)
        paths.append(path)
    opt = make_opt(imgSizes=(30, 61), imgMaxSize=75, padding_constant=16)
    ds = ImageListDataset([{"fpath_img": p} for p in paths], opt)
    for i, path in enumerate(paths):
        out = ds[i]
        assert list(out) == ["img_ori", "img_data", "info"]
        img = Image.open(path).convert("RGB")
        for got, want in zip(out["img_data"], original_multiscale(img, (30, 61), 75, 16), strict=True):
            assert torch.equal(got, want)
        assert np.array_equal(out["img_ori"], np.array(img)) and out["info"] == path


# --- bad inputs -----------------------------------------------------------------------------

@pytest.fixture
def good(tmp_path):
    rng = np.random.default_rng(9)
    recs = [write_sample(tmp_path, f"g{i}", random_rgb(rng, 16, 24), np.ones((16, 24), np.uint8))
            for i in range(2)]
    return tmp_path, recs


def check_error(excinfo, *parts):
    msg = str(excinfo.value)
    for part in parts:
        assert str(part) in msg, (part, msg)


def bad_val(tmp_path, recs, bad):
    odgt = write_odgt(tmp_path / "bad.odgt", recs + [bad])
    return ValDataset(str(tmp_path), odgt, make_opt()), odgt


def test_missing_image(good):
    root, recs = good
    bad = dict(recs[0], fpath_img="images/nope.png")
    ds, odgt = bad_val(root, recs, bad)
    with pytest.raises(DatasetError, match="not found") as e:
        ds[2]
    check_error(e, os.path.join(str(root), "images/nope.png"), odgt, "line 3")


def test_missing_annotation(good):
    root, recs = good
    ds, odgt = bad_val(root, recs, dict(recs[1], fpath_segm="annotations/nope.png"))
    with pytest.raises(DatasetError, match="annotation file not found") as e:
        ds[2]
    check_error(e, "annotations/nope.png", odgt, "line 3")


@pytest.mark.parametrize("kind", ["truncated_jpg", "truncated_png", "not_an_image"])
def test_unreadable_image(good, kind):
    root, recs = good
    src = root / "images/bad.jpg"
    if kind == "not_an_image":
        src.write_bytes(b"this is not an image at all")
    else:
        fmt = "JPEG" if kind == "truncated_jpg" else "PNG"
        buf_path = root / "full.bin"
        Image.fromarray(random_rgb(np.random.default_rng(0), 16, 24)).save(buf_path, format=fmt)
        data = buf_path.read_bytes()
        src.write_bytes(data[: len(data) // 2])
    ds, odgt = bad_val(root, recs, dict(recs[0], fpath_img="images/bad.jpg"))
    with pytest.raises(DatasetError, match="cannot read image") as e:
        ds[2]
    check_error(e, "images/bad.jpg", odgt, "line 3")


def test_size_mismatch(good):
    root, recs = good
    Image.fromarray(np.ones((16, 23), np.uint8)).save(root / "annotations/small.png")
    ds, odgt = bad_val(root, recs, dict(recs[0], fpath_segm="annotations/small.png"))
    with pytest.raises(DatasetError, match="differs from image") as e:
        ds[2]
    check_error(e, "annotations/small.png", "23x16", "24x16", odgt, "line 3")


def test_label_above_num_class(good):
    root, recs = good
    labels = np.ones((16, 24), np.uint8)
    labels[3, 4] = 11  # num_class is 10
    Image.fromarray(labels).save(root / "annotations/high.png")
    ds, odgt = bad_val(root, recs, dict(recs[0], fpath_segm="annotations/high.png"))
    with pytest.raises(DatasetError, match="above num_class=10") as e:
        ds[2]
    check_error(e, "annotations/high.png", "value 11", odgt, "line 3")


def test_colour_coded_annotation(good):
    root, recs = good
    colours = np.zeros((16, 24, 3), np.uint8)
    colours[:, :12] = (120, 120, 80)
    Image.fromarray(colours).save(root / "annotations/rgb.png")
    ds, odgt = bad_val(root, recs, dict(recs[0], fpath_segm="annotations/rgb.png"))
    with pytest.raises(DatasetError, match="colour-coded") as e:
        ds[2]
    check_error(e, "annotations/rgb.png", odgt, "line 3")


def test_malformed_odgt_lines(good):
    root, recs = good
    odgt = write_odgt(root / "json.odgt", [recs[0], "{'fpath_img': broken"])
    with pytest.raises(DatasetError, match="not JSON") as e:
        ValDataset(str(root), odgt, make_opt())
    check_error(e, odgt, "line 2")
    missing = {k: v for k, v in recs[1].items() if k != "fpath_img"}
    odgt = write_odgt(root / "key.odgt", [recs[0], "", missing])
    with pytest.raises(DatasetError, match="missing 'fpath_img'") as e:
        ImageListDataset(odgt, make_opt())
    check_error(e, odgt, "line 3")
    no_width = {k: v for k, v in recs[1].items() if k != "width"}
    with pytest.raises(DatasetError, match="missing 'width'") as e:
        TrainDataset(str(root), [recs[0], no_width], make_opt())
    check_error(e, "odgt list, item 2")
    with pytest.raises(DatasetError, match="JSON object"):
        ImageListDataset([["not", "a", "dict"]], make_opt())
    with pytest.raises(DatasetError, match="odgt file not found"):
        ValDataset(str(root), str(root / "absent.odgt"), make_opt())


def test_train_odgt_size_disagrees_with_image(good):
    root, recs = good
    wrong = dict(recs[0], width=30)
    ds = TrainDataset(str(root), [wrong], make_opt(), seed=0)
    with pytest.raises(DatasetError, match="odgt says 30x16 but the image is 24x16") as e:
        ds[0]
    check_error(e, "odgt list, item 1", "images/g0.png")


def test_train_bad_input_names_file(good):
    root, recs = good
    ds = TrainDataset(str(root), [dict(recs[0], fpath_segm="annotations/gone.png")], make_opt(), seed=0)
    with pytest.raises(DatasetError, match="annotation file not found") as e:
        ds[0]
    check_error(e, "annotations/gone.png", "item 1")


def test_error_survives_dataloader_worker(good):
    root, recs = good
    ds, odgt = bad_val(root, recs, dict(recs[0], fpath_img="images/nope.png"))
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=_unwrap)
    with pytest.raises(DatasetError) as e:
        list(loader)
    check_error(e, "images/nope.png", odgt, "line 3")


# --- image and annotation modes ---------------------------------------------------------

def test_image_modes_convert_to_rgb(tmp_path):
    gray = np.arange(16 * 24, dtype=np.uint8).reshape(16, 24)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    img = read_image(str(tmp_path / "gray.png"))
    assert img.mode == "RGB" and np.array_equal(np.array(img), np.repeat(gray[..., None], 3, 2))

    rgba = np.dstack([random_rgb(np.random.default_rng(1), 16, 24), np.full((16, 24), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.array_equal(np.array(read_image(str(tmp_path / "rgba.png"))), rgba[..., :3])

    cmyk = Image.fromarray(random_rgb(np.random.default_rng(2), 16, 24)).convert("CMYK")
    cmyk.save(tmp_path / "cmyk.jpg")
    expected = np.array(Image.open(tmp_path / "cmyk.jpg").convert("RGB"))
    assert np.array_equal(np.array(read_image(str(tmp_path / "cmyk.jpg"))), expected)

    deep = (np.arange(16 * 24, dtype=np.uint16).reshape(16, 24) * 170)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    got = np.array(read_image(str(tmp_path / "deep.png")))
    assert np.array_equal(got[..., 0], np.rint(deep / 257.0).astype(np.uint8))  # not clipped at 255
    assert got[..., 0].max() > 200 and got[..., 0].min() == 0

    pal = Image.fromarray(gray % 4).convert("P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9] + [0] * 756)
    pal.save(tmp_path / "pal.png")
    got = np.array(read_image(str(tmp_path / "pal.png")))
    assert tuple(got[0, 1]) == (0, 255, 0) and tuple(got[0, 3]) == (9, 9, 9)


def test_annotation_modes(tmp_path):
    idx = (np.arange(16 * 24).reshape(16, 24) % 6).astype(np.uint8)
    pal = Image.fromarray(idx, mode=None).convert("P")
    pal.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
    pal.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert np.array_equal(read_annotation(str(tmp_path / "p.png"), 10), idx)  # indices, not colours

    Image.fromarray(np.repeat(idx[..., None], 3, 2)).save(tmp_path / "grey_rgb.png")
    assert np.array_equal(read_annotation(str(tmp_path / "grey_rgb.png"), 10), idx)

    wide = (idx.astype(np.uint16) * 100)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    got = read_annotation(str(tmp_path / "wide.png"), 500)
    assert np.array_equal(got, wide.astype(np.int32))
    with pytest.raises(DatasetError, match="above num_class=400"):
        read_annotation(str(tmp_path / "wide.png"), 400)

    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(DatasetError, match="unsupported annotation mode 'F'"):
        read_annotation(str(tmp_path / "float.tif"))


def test_p_mode_and_16bit_annotations_in_datasets(tmp_path):
    h, w = 24, 32
    idx = (1 + np.mgrid[0:h, 0:w][1] // 4).astype(np.uint8)  # 1..8
    rng = np.random.default_rng(3)
    rec = write_sample(tmp_path, "pm", random_rgb(rng, h, w), idx, label_mode="P")
    assert Image.open(tmp_path / rec["fpath_segm"]).mode == "P"
    opt = make_opt(imgSizes=(24,), imgMaxSize=1000, segm_downsampling_rate=8)
    seg = ValDataset(str(tmp_path), [rec], opt)[0]["seg_label"][0]
    assert torch.equal(seg, torch.from_numpy(idx.astype(np.int64) - 1))
    train = TrainDataset(str(tmp_path), [rec], opt, seed=0)[0]["seg_label"][0]
    assert torch.equal(train, torch.from_numpy(idx[4::8, 4::8].astype(np.int64) - 1))

    wide = idx.astype(np.uint16) * 40  # up to 320 classes
    Image.fromarray(wide).save(tmp_path / rec["fpath_segm"])
    opt = make_opt(num_class=320, imgSizes=(12,), imgMaxSize=1000, segm_downsampling_rate=4,
                   padding_constant=8)
    train = TrainDataset(str(tmp_path), [rec], opt, seed=0)[0]["seg_label"][0]
    expected = np.asarray(Image.fromarray(wide.astype(np.int32)).resize((16, 12), Image.NEAREST))
    assert train.shape == (4, 4)  # 12 x 16 padded to 16 x 16
    assert torch.equal(train[:3], torch.from_numpy(expected[2::4, 2::4].astype(np.int64) - 1))


def test_exif_orientation_applied_at_test_time_only(tmp_path):
    stored = random_rgb(np.random.default_rng(4), 20, 40)  # stored landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "photo.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    opt = make_opt(imgSizes=(16,), imgMaxSize=100)
    out = ImageListDataset([{"fpath_img": str(path)}], opt)[0]
    assert out["img_ori"].shape == (40, 20, 3)  # displayed portrait
    assert out["img_data"][0].shape[2] > out["img_data"][0].shape[3]
    assert read_image(str(path)).size == (40, 20)  # no rotation unless asked
