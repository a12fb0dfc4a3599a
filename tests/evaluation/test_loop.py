"""The one evaluation loop: a consumer added to it receives every sample once, in
list order, with the prediction the engine makes for it (and the metrics consumer
beside it counts the very same predictions); the worst-images consumer ranks the
same with or without per-image statistics shared by a metrics consumer; the
report page's template and assets ship with the package (rendered from a build
of it)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mit_semseg.config import load_cfg
from mit_semseg.data.datasets import ValDataset
from mit_semseg.data.synthetic import make_synthetic_dataset
from mit_semseg.evaluation import Consumer, EvalSample, run_evaluation
from mit_semseg.evaluation.consumers import MetricsConsumer, WorstImagesConsumer
from mit_semseg.evaluation.metrics import confusion_counts
from mit_semseg.inference.engine import InferenceEngine
from mit_semseg.data.transforms import Preprocess

from _support import CFG, NUM_CLASS, ROOT, TinyNet

pytestmark = pytest.mark.usefixtures("one_thread")


class _Backend:
    """TinyNet as an engine backend."""

    def __init__(self) -> None:
        self.net, self.num_class = TinyNet(NUM_CLASS).eval(), NUM_CLASS

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return self.net(img)


class _Recorder(Consumer):
    """A consumer of the test's own: keeps a copy of everything it is given."""

    def __init__(self) -> None:
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1
        self.seen: list[tuple[EvalSample, np.ndarray]] = []

    def process(self, sample: EvalSample, prediction: np.ndarray) -> None:
        self.seen.append((sample, prediction.copy()))

    def result(self) -> int:
        return len(self.seen)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    lists = make_synthetic_dataset(str(root), num_train=0, num_val=4, size_range=(40, 64),
                                   num_class=NUM_CLASS, seed=5)
    cfg = load_cfg(CFG, ["DATASET.root_dataset", str(root), "DATASET.list_val",
                         lists["validation"], "DATASET.imgSizes", "(40, 56)",
                         "DATASET.imgMaxSize", "120"])
    dataset = ValDataset(cfg.DATASET.root_dataset, cfg.DATASET.list_val, cfg.DATASET)
    engine = InferenceEngine(None, device="cpu", backend=_Backend(),
                             preprocess=Preprocess.from_config(cfg.DATASET))
    return dataset, engine


def test_a_custom_consumer_receives_every_sample(data):
    dataset, engine = data
    recorder, metrics = _Recorder(), MetricsConsumer(NUM_CLASS)
    seconds = run_evaluation(engine, dataset, [metrics, recorder], first=10)
    assert seconds > 0 and recorder.resets == 1 and recorder.result() == len(dataset) == 4
    conf = np.zeros((NUM_CLASS, NUM_CLASS), np.int64)
    for i, (sample, pred) in enumerate(recorder.seen):
        item = dataset[i]
        assert sample.index == 10 + i and sample.name == dataset.list_sample[i]["fpath_img"]
        assert np.array_equal(sample.image, item["img_ori"])
        assert np.array_equal(sample.label, item["seg_label"][0].numpy())
        # the engine's own prediction for this image, at the label's size
        assert pred.shape == sample.label.shape and pred.dtype == np.int64
        assert np.array_equal(pred, engine.predict_sample(item).labels)
        conf += confusion_counts(pred, sample.label, NUM_CLASS)
    # the metrics consumer counted exactly these predictions
    assert np.array_equal(metrics.result().confusion, conf) and conf.sum() > 0
    assert metrics.result().num_images == 4

    # a second pass starts afresh
    run_evaluation(engine, dataset, [metrics, recorder])
    assert recorder.resets == 2 and recorder.result() == 4
    assert [s.index for s, _ in recorder.seen] == [0, 1, 2, 3]
    assert np.array_equal(metrics.result().confusion, conf)


def test_worst_images_alone_or_after_the_metrics(data):
    dataset, engine = data
    colors = np.zeros((NUM_CLASS, 3), np.uint8)
    alone = WorstImagesConsumer(2, NUM_CLASS, colors, max_side=16)
    metrics = MetricsConsumer(NUM_CLASS, per_image=True)
    after = WorstImagesConsumer(2, NUM_CLASS, colors, max_side=16)
    run_evaluation(engine, dataset, [alone], first=3)
    run_evaluation(engine, dataset, [metrics, after], first=3)
    stats = metrics.result().images
    ranked = sorted(range(4), key=lambda i: (stats[i].mean_iou, i))[:2]
    want = [(stats[i].name, stats[i].mean_iou, 3 + i) for i in ranked]
    assert alone.result().ranking() == after.result().ranking() == want
    assert alone.result().panels() == after.result().panels()


_RENDER = """
import os, sys
import mit_semseg
from mit_semseg.evaluation.html_report import ReportAssetError, render_html_report
from mit_semseg.evaluation.metrics import SegmentationMetrics
assert mit_semseg.__file__.startswith(sys.argv[1]), mit_semseg.__file__
m = SegmentationMetrics(3)
m.update([[0, 1], [2, 2]], [[0, 1], [1, 2]])
with open(sys.argv[2], "w", encoding="utf-8") as fh:
    fh.write(render_html_report(m.summary()))
os.remove(sys.argv[3])
try:
    render_html_report(m.summary())
except ReportAssetError as exc:
    print(exc)
"""


def test_report_page_renders_from_a_built_package(tmp_path):
    pytest.importorskip("setuptools")
    build = str(tmp_path / "lib")
    # what an install copies: the packages and their package_data (setup.py)
    made = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", build],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    static = os.path.join(build, "mit_semseg", "evaluation", "static")
    assert sorted(os.listdir(static)) == ["report.css", "report.html", "report.js"]
    env = dict(os.environ, PYTHONPATH=build)
    out, js_path = str(tmp_path / "page.html"), os.path.join(static, "report.js")
    with open(os.path.join(static, "report.css"), encoding="utf-8") as fh:
        css = fh.read()
    with open(js_path, encoding="utf-8") as fh:
        js = fh.read()
    run = subprocess.run([sys.executable, "-c", _RENDER, build, out, js_path], cwd=str(tmp_path),
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    with open(out, encoding="utf-8") as fh:
        page = fh.read()
    # one file: the styles and the script inlined, every placeholder filled
    assert f"<style>\n{css}</style>" in page and f"<script>\n{js}</script>" in page
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</body></html>\n")
    assert "$" not in page.replace(js, "").replace(css, "")
    assert 'id="classes"' in page and "3 classes</footer>" in page
    # an installation that lost an asset says which
    assert f"report page asset {js_path} is missing" in run.stdout
