"""The evaluation report: the added metrics equal independent numpy formulas
(precision, recall, F1 / Dice, fwIoU, overall score, per-image mIoU, boundary
IoU by its definition), and the HTML page shows them, is self-contained,
escapes names and works in headless Chromium (skipped without it)."""
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from mit_semseg.evaluation.html_report import (render_html_report, top_confusions,
                                               write_html_report)
from mit_semseg.evaluation.panels import WorstPanels, error_map, panel_tiles
from mit_semseg.evaluation.metrics import SegmentationMetrics, boundary_band, boundary_width, image_stats

K = 6


def _pairs(count=5, seed=0, k=K, size=(12, 17)):
    """Random (pred, label) maps: labels never use class k-1 and predictions on
    labeled pixels never do either, so it is absent from both; class k-2 is
    predicted but never labeled."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        label = rng.integers(0, k - 2, size)
        label[rng.random(size) < 0.15] = -1
        pred = rng.integers(0, k - 1, size)
        pred[label < 0] = rng.integers(0, k, int((label < 0).sum()))  # anything unlabeled
        yield pred, label


def _numpy_confusion(pairs, k):
    conf = np.zeros((k, k), np.int64)
    for pred, label in pairs:
        keep = label >= 0
        np.add.at(conf, (label[keep], pred[keep]), 1)
    return conf


def _metrics(pairs, k=K, **kw):
    m = SegmentationMetrics(k, **kw)
    for i, (pred, label) in enumerate(pairs):
        m.update(pred, label, name=f"img{i}") if m.per_image else m.update(pred, label)
    return m


# ============================================================================ numbers

def test_summary_numbers_equal_numpy():
    pairs = list(_pairs())
    s = _metrics(pairs).summary()
    conf = _numpy_confusion(pairs, K)
    assert np.array_equal(np.array(s["confusion"]), conf)
    # rows sum to the labeled pixels of each class, the whole to all labeled pixels
    labeled = np.array([sum(int((lab == c).sum()) for _, lab in pairs) for c in range(K)])
    assert np.array_equal(conf.sum(1), labeled)
    assert s["labeled_pixels"] == sum(int((lab >= 0).sum()) for _, lab in pairs)

    tp = np.diag(conf).astype(float)
    gt, pr = conf.sum(1).astype(float), conf.sum(0).astype(float)
    iou = tp / (gt + pr - tp + 1e-10)
    pa = tp.sum() / conf.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        recall, precision = tp / gt, tp / pr
        f1 = 2 * precision * recall / (precision + recall)
    f1[(pr > 0) & (gt == 0)] = 0.0  # predicted, never labeled: F1 = 0
    fw = (gt / gt.sum() * iou).sum()
    rows = s["per_class"]
    for c in range(K):
        for key, ref in (("accuracy", recall[c]), ("precision", precision[c]), ("f1", f1[c])):
            if np.isnan(ref):
                assert rows[c][key] is None, (c, key)
            else:
                assert rows[c][key] == pytest.approx(ref, rel=1e-12), (c, key)
        assert rows[c]["pixel_share"] == pytest.approx(gt[c] / gt.sum(), rel=1e-12)
        assert rows[c]["predicted_pixels"] == pr[c]
        assert rows[c]["images"] is None and rows[c]["boundary_iou"] is None
    # the conventions: K-1 absent from both, K-2 predicted only
    assert rows[K - 1]["precision"] is None and rows[K - 1]["f1"] is None
    assert rows[K - 2]["accuracy"] is None and rows[K - 2]["f1"] == 0.0
    assert rows[K - 2]["precision"] == 0.0
    assert s["mean_iou"] == pytest.approx(iou.mean(), rel=1e-12)
    assert s["pixel_accuracy"] == pytest.approx(pa, rel=1e-9)
    assert s["frequency_weighted_iou"] == pytest.approx(fw, rel=1e-12)
    assert s["overall_score"] == pytest.approx((iou.mean() + pa) / 2, rel=1e-9)
    assert s["mean_f1"] == s["mean_dice"] == pytest.approx(np.nanmean(f1), rel=1e-12)
    assert s["mean_class_accuracy"] == pytest.approx(np.nanmean(recall), rel=1e-12)
    assert s["per_image"] is None and s["mean_boundary_iou"] is None
    json.dumps(s, allow_nan=False)  # strict JSON


def test_existing_summary_keys_are_unchanged():
    pairs = list(_pairs(seed=3))
    s = _metrics(pairs).summary({0: "wall"})
    old = {"num_images", "num_class", "mean_iou", "pixel_accuracy", "mean_class_accuracy",
           "frequency_weighted_iou", "labeled_pixels", "per_class"}
    assert old <= set(s)
    assert list(s["per_class"][0])[:7] == ["index", "name", "iou", "accuracy", "intersection",
                                           "union", "labeled_pixels"]
    assert s["per_class"][0]["name"] == "wall"


def _image_reference(pred, label, k):
    keep = label >= 0
    ious = []
    for c in range(k):
        inter = int(((label == c) & (pred == c) & keep).sum())
        union = int((((label == c) | (pred == c)) & keep).sum())
        if union:
            ious.append(inter / union)
    acc = float((pred[keep] == label[keep]).mean())
    return float(np.mean(ious)), acc, tuple(sorted(set(label[keep].tolist())))


def test_per_image_stats_and_image_counts():
    pairs = list(_pairs(count=4, seed=5))
    m = _metrics(pairs, per_image=True)
    plain = _metrics(pairs)
    assert np.array_equal(m.confusion, plain.confusion) and m.num_images == 4
    counts = np.zeros(K, int)
    for stats, (pred, label) in zip(m.images, pairs):
        miou, acc, classes = _image_reference(pred, label, K)
        assert stats.mean_iou == pytest.approx(miou, rel=1e-12)
        assert stats.pixel_accuracy == pytest.approx(acc, rel=1e-12)
        assert stats.classes == classes
        assert stats.labeled_pixels == int((label >= 0).sum())
        counts[list(classes)] += 1
    assert np.array_equal(m.image_count, counts)
    s = m.summary()
    assert [r["images"] for r in s["per_class"]] == counts.tolist()
    assert [r["name"] for r in s["per_image"]] == ["img0", "img1", "img2", "img3"]
    assert s["per_image"][1]["mean_iou"] == pytest.approx(m.images[1].mean_iou)
    # an image without labeled pixels: undefined, not zero
    empty = image_stats(np.zeros((3, 3), int), np.full((3, 3), -1), K)
    assert np.isnan(empty.mean_iou) and np.isnan(empty.pixel_accuracy)
    assert empty.to_json()["mean_iou"] is None


def _band_reference(mask, d):
    """Boundary band by the definition: the mask minus its erosion by a 3x3 square
    iterated d times, the image border counting as background."""
    if not mask.any():
        return mask
    return mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), iterations=d,
                                          border_value=0)


def test_boundary_band_matches_iterated_erosion():
    rng = np.random.default_rng(2)
    for _ in range(10):
        mask = ndimage.zoom(rng.random((5, 6)), 7, order=1) > 0.5
        d = int(rng.integers(1, 5))
        assert np.array_equal(boundary_band(mask, d), _band_reference(mask, d))
    assert boundary_width(480, 640) == round(0.02 * 800)
    assert boundary_width(10, 10) == 1


def test_boundary_iou_matches_per_class_reference():
    rng = np.random.default_rng(7)
    k, pairs = 5, []
    for _ in range(3):
        label = (ndimage.zoom(rng.random((4, 5)), (10, 10), order=0) * (k - 1)).astype(int)
        label[:6, :9] = -1
        pred = np.maximum(np.roll(label, 2, axis=1), 0)
        pred[label < 0] = rng.integers(0, k, int((label < 0).sum()))
        pred[20:26, 5:30] = k - 1
        pairs.append((pred, label))
    m = _metrics(pairs, k=k, boundary=True, dilation_ratio=0.05)
    inter, union = np.zeros(k, int), np.zeros(k, int)
    for pred, label in pairs:
        d = max(1, int(round(0.05 * np.hypot(*label.shape))))
        keep = label >= 0
        for c in range(k):
            g, p = _band_reference(label == c, d), _band_reference(pred == c, d)
            inter[c] += int((g & p & keep).sum())
            union[c] += int(((g | p) & keep).sum())
    assert np.array_equal(m.boundary_intersection, inter)
    assert np.array_equal(m.boundary_union, union)
    s = m.summary()
    ref = [inter[c] / union[c] if union[c] else None for c in range(k)]
    assert [r["boundary_iou"] for r in s["per_class"]] == pytest.approx(ref)
    assert s["mean_boundary_iou"] == pytest.approx(np.mean([v for v in ref if v is not None]))
    assert s["boundary_dilation_ratio"] == 0.05
    # a perfect prediction has boundary IoU 1 for every class present
    label = pairs[0][1]
    perfect = image_stats(np.maximum(label, 0), label, k, boundary=True)
    present = perfect.boundary_union > 0
    assert present.any()
    assert np.array_equal(perfect.boundary_intersection[present], perfect.boundary_union[present])


def test_merge_keeps_per_image_results_and_checks_settings():
    pairs = list(_pairs(count=6, seed=9))
    whole = _metrics(pairs, boundary=True)
    a, b = SegmentationMetrics(K, boundary=True), SegmentationMetrics(K, boundary=True)
    for i, (pred, label) in enumerate(pairs):
        (a if i < 3 else b).update(pred, label, name=f"img{i}")
    a.merge(b)
    assert a.summary() == whole.summary()
    with pytest.raises(ValueError, match="per-image settings"):
        SegmentationMetrics(K).merge(whole)
    with pytest.raises(ValueError, match="per-image settings"):
        SegmentationMetrics(K, boundary=True, dilation_ratio=0.1).merge(whole)


def test_all_reduce_single_process_keeps_everything(tmp_path):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    pairs = list(_pairs(count=3, seed=4))
    m = _metrics(pairs, boundary=True)
    before = m.summary()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdv'}", rank=0,
                            world_size=1)
    try:
        m.all_reduce()
    finally:
        dist.destroy_process_group()
    assert m.summary() == before


# ============================================================================ page

def _record(names=None, seed=0):
    pairs = list(_pairs(count=5, seed=seed))
    m = _metrics(pairs, boundary=True)
    record = {"checkpoint": "epoch_20.pth", "list_val": "val.odgt", **m.summary(names)}
    return record, m


SUMMARY_KEYS = ("mean_iou", "pixel_accuracy", "mean_class_accuracy", "frequency_weighted_iou",
                "mean_dice", "overall_score", "mean_boundary_iou")


def test_page_shows_every_summary_number_and_is_self_contained(tmp_path):
    record, _ = _record()
    path = write_html_report(record, str(tmp_path / "report.html"))
    page = open(path, encoding="utf-8").read()
    for key in SUMMARY_KEYS:
        value = record[key]
        assert f"{value * 100:.2f}%" in page, key
        assert f'title="{float(value)!r}"' in page, key  # the exact value on hover
    for row in record["per_class"]:
        assert f"{row['iou'] * 100:.2f}%" in page
    for needle in ("http://", "https://", 'src="//', "href=\"//", "@import", "url("):
        assert needle not in page, needle
    # the embedded counts are the record's, reordered by frequency
    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)'
                                r'</script>', page, re.S).group(1))
    order = data["index"]
    conf = np.array(record["confusion"])
    assert np.array_equal(np.array(data["confusion"]), conf[np.ix_(order, order)])
    assert list(conf.sum(1)[order]) == sorted(conf.sum(1)[order], reverse=True)
    assert K - 1 not in order  # absent from labels and predictions: left out


def test_names_are_escaped():
    evil = '<script>alert("x")</script>'
    names = {c: f"c{c}" for c in range(K)}
    names[0] = evil
    names[1] = 'a&b "quoted" <b>'
    record, _ = _record(names)
    record["checkpoint"] = "<img src=x onerror=alert(1)>"
    panels = [(evil, [np.zeros((4, 4, 3), np.uint8)] * 4)]
    page = render_html_report(record, panels=panels)
    assert evil not in page and "<img src=x" not in page and "<b>\"" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "a&amp;b &quot;quoted&quot; &lt;b&gt;" in page
    assert page.count("<script") == 2  # the data block and the page's own script
    assert "\\u003cscript\\u003e" in page  # inside the JSON block


def test_records_without_the_new_keys_render():
    """Today's JSON (no confusion, precision...) and an empty run still give a page."""
    record, _ = _record()
    old_keys = ("index", "name", "iou", "accuracy", "intersection", "union", "labeled_pixels")
    old = {k: record[k] for k in ("num_images", "num_class", "mean_iou", "pixel_accuracy",
                                  "mean_class_accuracy", "frequency_weighted_iou")}
    old["per_class"] = [{k: r[k] for k in old_keys} for r in record["per_class"]]
    page = render_html_report(old)
    assert "no confusion counts" in page and f"{old['mean_iou'] * 100:.2f}%" in page
    assert "No labeled pixels" in render_html_report(SegmentationMetrics(3).summary())
    assert "<table" not in render_html_report({})


def test_top_confusions_and_panels():
    conf = np.array([[90, 10, 0], [30, 60, 10], [0, 0, 0]])
    top = top_confusions(conf, ["car", "road", "sky"], n=5)
    assert [(t["gt"], t["pred"]) for t in top] == [("road", "car"), ("car", "road"),
                                                   ("road", "sky")]
    assert top[0]["share"] == pytest.approx(0.3) and top[0]["count"] == 30

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    label = rng.integers(-1, 3, (40, 50))
    pred = rng.integers(0, 3, (40, 50))
    err = error_map(image, label, pred)
    wrong = (label >= 0) & (pred != label)
    assert (err[label < 0] == 0).all()
    assert (err[wrong][:, 0] == 255).all() and (err[wrong][:, 1] < 64).all()
    right = (label >= 0) & (pred == label)
    assert (err[right][:, 0] == err[right][:, 1]).all()  # grey
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    tiles = panel_tiles(image, label, pred, colors, max_side=25)
    assert [t.shape for t in tiles] == [(20, 25, 3)] * 4

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    record, _ = _record()
    page = render_html_report(record, panels=[("a.jpg", tiles), ("b.jpg", buf.getvalue(), "x")])
    assert page.count("data:image/png;base64,") == 5
    with pytest.raises(ValueError, match="PNG"):
        render_html_report(record, panels=[("c.jpg", b"GIF89a")])


def test_worst_panels_keeps_the_lowest_scores():
    keeper = WorstPanels(2, np.zeros((3, 3), np.uint8), max_side=8)
    img = np.zeros((8, 8, 3), np.uint8)
    lab = np.zeros((8, 8), int)
    for score, name in ((0.5, "a"), (0.1, "b"), (float("nan"), "n"), (0.9, "c"), (0.2, "d")):
        keeper.offer(score, name, img, lab, lab)
    panels = keeper.panels()
    assert [p[0] for p in panels] == ["b", "d"]
    assert all(len(tiles) == 4 and tiles[0].startswith(b"\x89PNG") for _, tiles in panels)


# ============================================================================ browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def test_page_in_headless_chromium(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs chromium and chromedriver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    record, _ = _record(seed=1)
    tiles = panel_tiles(np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16), int),
                        np.ones((16, 16), int), np.eye(3, dtype=np.uint8) * 255)
    path = write_html_report(record, str(tmp_path / "r.html"), panels=[("img0", tiles)])
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER),
                              options=opts)
    try:
        driver.get("file://" + os.path.abspath(path))

        def column(key):
            col = [th.get_attribute("data-key") for th in
                   driver.find_elements(By.CSS_SELECTOR, "#classes thead th")].index(key)
            return [td.get_attribute("data-v") for td in driver.find_elements(
                By.CSS_SELECTOR, f"#classes tbody td:nth-child({col + 1})")]

        header = driver.find_element(By.CSS_SELECTOR, '#classes th[data-key="iou"]')
        header.click()
        ious = [float(v) for v in column("iou")]
        assert ious == sorted(ious) and len(ious) == K
        assert header.get_attribute("aria-sort") == "ascending"
        header.click()
        assert [float(v) for v in column("iou")] == sorted(ious, reverse=True)
        driver.find_element(By.CSS_SELECTOR, '#classes th[data-key="precision"]').click()
        prec = column("precision")
        assert prec[-1] == ""  # the undefined value sorts last
        assert [float(v) for v in prec[:-1]] == sorted(float(v) for v in prec[:-1])

        canvas = driver.find_element(By.ID, "heat")
        size = driver.execute_script("return [arguments[0].width, arguments[0].height]", canvas)
        assert min(size) > 50
        painted = driver.execute_script(
            "var c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height)"
            ".data, n = 0; for (var i = 0; i < d.length; i += 4) if (d[i] < 250 || d[i + 1] < 250)"
            " n++; return n;", canvas)
        assert painted > 100
        # hover the first cell (the most frequent class, predicted as itself)
        margin, cell = (float(canvas.get_attribute(a)) for a in ("data-margin", "data-cell"))
        width = float(driver.execute_script("return arguments[0].clientWidth", canvas))
        at = margin + cell / 2 - width / 2  # offsets from the element's centre
        ActionChains(driver).move_to_element_with_offset(canvas, int(at), int(at)).perform()
        tip = driver.find_element(By.ID, "heat-tip")
        assert tip.is_displayed()
        conf = np.array(record["confusion"])
        top = int(np.argmax(conf.sum(1)))
        name = record["per_class"][top]["name"]
        share = conf[top, top] / conf[top].sum() * 100
        assert tip.text == (f"{name} \u2192 {name}: {conf[top, top]:,} px, {share:.1f}% of "
                            f"{name} pixels")
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        driver.quit()
