"""What evaluation writes beside its JSON: the report page. On a small model with
parity-rule weights and the synthetic set, every number on the page equals the
JSON's, and the JSON's equal a numpy computation from its confusion counts,
whose rows sum to the labeled pixels of the annotation files; the worst images
are the lowest per-image mIoU; the page works in headless Chromium; training's
``validate`` keeps none of this."""
import html
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from mit_semseg.benchmark import write_rule_checkpoint
from mit_semseg.config import load_cfg
from mit_semseg.data.synthetic import make_synthetic_dataset
from mit_semseg.evaluation import evaluate, validate
from mit_semseg.evaluation.report import report_path, results_path
from mit_semseg.models import ModelBuilder, SegmentationNetwork

from _support import CFG, NUM_CLASS, tiny_opts

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_VAL = 6
WORST = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One evaluation (boundary IoU on, 3 worst images): (cfg, record, console text)."""
    base = tmp_path_factory.mktemp("eval_report")
    make_synthetic_dataset(str(base / "data"), num_train=0, num_val=NUM_VAL,
                           size_range=(40, 72), num_class=NUM_CLASS, seed=2)
    ckpt = str(base / "ckpt")
    cfg = load_cfg(CFG, tiny_opts(ckpt, base / "data") + [
        "VAL.boundary_iou", "True", "VAL.worst_images", str(WORST)])
    write_rule_checkpoint(cfg, ckpt)
    out = io.StringIO()
    record = evaluate(cfg, "cpu", progress=False, stream=out)
    return cfg, record, out.getvalue()


def _annotation_labels(cfg):
    """Labels read straight from the annotation PNGs (value k + 1 for class k, 0 unlabeled)."""
    root = cfg.DATASET.root_dataset
    with open(cfg.DATASET.list_val) as fh:
        for line in fh:
            with Image.open(os.path.join(root, json.loads(line)["fpath_segm"])) as im:
                yield np.asarray(im).astype(np.int64) - 1


def test_json_holds_the_record_and_matches_numpy(run):
    cfg, record, console = run
    with open(results_path(cfg)) as fh:
        text = fh.read()
    saved = json.loads(text)
    assert saved == json.loads(json.dumps(record))
    # compact: one line per top-level key and per row of the long lists
    rows = sum(len(saved[k]) for k in ("confusion", "per_class", "per_image", "top_confusions"))
    assert len(text.splitlines()) <= len(saved) + rows + 2 * 4 + 2
    assert all(f"[{','.join(map(str, r))}]" in text for r in saved["confusion"])

    conf = np.array(saved["confusion"], dtype=np.int64)
    assert conf.shape == (NUM_CLASS, NUM_CLASS)
    # rows: the labeled pixels of each class in the annotation files
    labeled = np.zeros(NUM_CLASS, np.int64)
    for lab in _annotation_labels(cfg):
        assert lab.max() < NUM_CLASS
        labeled += np.bincount(lab[lab >= 0], minlength=NUM_CLASS)
    assert np.array_equal(conf.sum(1), labeled)
    assert saved["labeled_pixels"] == int(labeled.sum()) and saved["num_images"] == NUM_VAL

    tp, gt, pr = np.diag(conf).astype(float), conf.sum(1).astype(float), conf.sum(0).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall, precision = tp / gt, tp / pr
        f1 = np.where(gt + pr > 0, 2 * tp / (gt + pr), np.nan)
    iou = tp / (gt + pr - tp + 1e-10)
    fwiou = (gt / gt.sum() * iou).sum()
    acc = tp.sum() / gt.sum()
    for c, row in enumerate(saved["per_class"]):
        for key, ref in (("accuracy", recall[c]), ("precision", precision[c]), ("f1", f1[c]),
                         ("iou", iou[c]), ("pixel_share", gt[c] / gt.sum())):
            if np.isnan(ref):
                assert row[key] is None, (c, key)
            else:
                assert row[key] == pytest.approx(ref, rel=1e-12, abs=1e-15), (c, key)
        assert row["labeled_pixels"] == gt[c] and row["predicted_pixels"] == pr[c]
    assert saved["frequency_weighted_iou"] == pytest.approx(fwiou, rel=1e-12)
    assert saved["pixel_accuracy"] == pytest.approx(acc, rel=1e-9)
    assert saved["mean_iou"] == pytest.approx(iou.mean(), rel=1e-12)
    assert saved["mean_dice"] == saved["mean_f1"] == pytest.approx(np.nanmean(f1), rel=1e-12)
    assert saved["overall_score"] == pytest.approx((iou.mean() + acc) / 2, rel=1e-9)
    assert saved["mean_boundary_iou"] is not None
    # the console: the original's summary line, then the added ones
    assert f"Mean IoU: {saved['mean_iou']:.4f}, Accuracy: {acc * 100:.2f}%" in console
    assert (f"Mean Dice/F1: {saved['mean_dice']:.4f}, Overall score: "
            f"{saved['overall_score']:.4f}, Mean boundary IoU: "
            f"{saved['mean_boundary_iou']:.4f}") in console
    assert f"Report written to {report_path(cfg)}" in console

    # per image, in list order; the worst are the lowest mIoU (earlier first on ties)
    per_image = saved["per_image"]
    assert [r["name"] for r in per_image] == \
        [f"images/validation/scene_{i:05d}.jpg" for i in range(NUM_VAL)]
    ranked = sorted(range(NUM_VAL), key=lambda i: (per_image[i]["mean_iou"], i))[:WORST]
    assert [w["name"] for w in saved["worst_images"]] == [per_image[i]["name"] for i in ranked]
    hist = saved["per_image_histogram"]
    values = np.array([r["mean_iou"] for r in per_image])
    assert hist["counts"] == np.histogram(values, bins=20, range=(0, 1))[0].tolist()
    assert hist["median"] == pytest.approx(np.median(values))


def _cells(page, column):
    """data-v of every cell of ``column`` in the per-class table, by class index."""
    head = re.search(r'<table id="classes".*?<thead><tr>(.*?)</tr>', page, re.S).group(1)
    keys = re.findall(r'data-key="(\w+)"', head)
    body = re.search(r"<tbody>(.*?)</tbody>", page, re.S).group(1)
    out = {}
    for tr in re.findall(r"<tr>(.*?)</tr>", body, re.S):
        values = [html.unescape(v) for v in re.findall(r'<td[^>]*data-v="([^"]*)"', tr)]
        out[int(float(values[keys.index("index")]))] = values[keys.index(column)]
    return out


def test_page_shows_the_json_numbers(run):
    cfg, _, _ = run
    with open(results_path(cfg)) as fh:
        saved = json.load(fh)
    with open(report_path(cfg), encoding="utf-8") as fh:
        page = fh.read()
    for needle in ("http://", "https://", 'src="//', "@import", "url("):
        assert needle not in page, needle
    for key in ("mean_iou", "pixel_accuracy", "mean_class_accuracy", "frequency_weighted_iou",
                "mean_dice", "overall_score", "mean_boundary_iou"):
        shown = re.search(rf'data-key="{key}">.*?class="card-v" title="([^"]+)"', page, re.S)
        assert float(shown.group(1)) == saved[key], key
    for column in ("iou", "accuracy", "precision", "f1", "pixel_share", "images", "boundary_iou"):
        cells = _cells(page, column)
        for row in saved["per_class"]:
            want = row[column]
            assert cells[row["index"]] == ("" if want is None else repr(float(want))), column
    # top confusions: the JSON's list, in order, with its shares and counts
    items = re.findall(r"<li><span class=\"pair\"><b>(.*?)</b> \u2192 <b>(.*?)</b></span>: "
                       r"([\d.]+)% of .*?\(([\d,]+) px\)", page)
    assert [(html.unescape(a), html.unescape(b), float(s), int(n.replace(",", "")))
            for a, b, s, n in items] == \
        [(t["gt"], t["pred"], round(t["share"] * 100, 1), t["count"])
         for t in saved["top_confusions"]]
    # histogram bars: the JSON's counts
    bars = re.findall(r"<title>mIoU \d+\u2013\d+%: (\d+) images?</title>", page)
    assert [int(b) for b in bars] == saved["per_image_histogram"]["counts"]
    # the worst images, in the JSON's order, four tiles each
    captions = re.findall(r'<figcaption title="([^"]*)">', page)
    assert [html.unescape(c) for c in captions] == [w["name"] for w in saved["worst_images"]]
    assert page.count("data:image/png;base64,") == 4 * WORST
    print(f"report page: {len(page.encode())} bytes")


def test_report_page_in_headless_chromium(run):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not (chromium and shutil.which("chromedriver")):
        pytest.skip("needs chromium and chromedriver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    cfg, _, _ = run
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(
        executable_path=shutil.which("chromedriver")), options=opts)
    try:
        driver.get("file://" + os.path.abspath(report_path(cfg)))
        loaded = driver.execute_script(
            "return Array.from(document.querySelectorAll('.panel img'))"
            ".map(i => i.complete && i.naturalWidth > 0)")
        assert loaded == [True] * (4 * WORST)
        assert driver.find_element(By.ID, "heat").size["width"] > 50
        assert driver.find_element(By.ID, "hist").is_displayed()
        assert not [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    finally:
        driver.quit()


def test_validate_keeps_no_per_image_results(run, monkeypatch):
    cfg, record, _ = run
    from mit_semseg.evaluation import panels
    monkeypatch.setattr(panels, "panel_tiles", lambda *a, **k: pytest.fail("panels built"))
    enc = ModelBuilder.build_encoder("resnet18dilated", 512, "", pretrained=False)
    dec = ModelBuilder.build_decoder("c1", 512, NUM_CLASS, "", use_softmax=True)
    enc.load_state_dict(torch.load(os.path.join(cfg.DIR, "encoder_epoch_1.pth")))
    dec.load_state_dict(torch.load(os.path.join(cfg.DIR, "decoder_epoch_1.pth")))
    summary = validate(cfg, SegmentationNetwork(enc, dec), "cpu")
    assert summary["per_image"] is None and summary["mean_boundary_iou"] is None
    assert summary["confusion"] == record["confusion"]  # the same numbers
