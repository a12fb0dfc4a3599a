"""The web demo in a real browser: headless Chromium (Debian's chromium +
chromium-driver) driven by Selenium loads the page from uvicorn on 127.0.0.1,
uploads a photo and checks the legend, the hover readout and the highlight
against the API's answer; also a phone-sized window. Skips only when Chromium
or chromedriver is absent (.ci/run installs them)."""
import base64
import io
import json
import shutil
import socket
import threading
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
uvicorn = pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from _web_support import CFG, OPTS, WIDE_OPTS, encode, photo, write_rule_checkpoint  # noqa: E402

from mit_semseg.web.app import create_app  # noqa: E402
from mit_semseg.web.images import read_label_png  # noqa: E402
from mit_semseg.web.models import WebModel  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver")
WAIT_S = 120
SERVED = {}  # name -> WebModel of the server fixture


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Base URL of the demo served by uvicorn in a thread on a free 127.0.0.1 port:
    the 150-class model (default) and a 400-class one named "wide"."""
    torch.set_num_threads(1)
    models = []
    for name, opts in ((None, OPTS), ("wide", WIDE_OPTS)):
        folder = tmp_path_factory.mktemp("ckpt")
        write_rule_checkpoint(str(folder), opts)
        models.append(WebModel.from_config(CFG, checkpoint_dir=str(folder), opts=opts,
                                           device="cpu", name=name))
    SERVED.update((m.name, m) for m in models)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # connections wait in the backlog until uvicorn accepts them
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(models), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(30)
    sock.close()


@pytest.fixture
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER),
                              options=opts)
    yield driver
    driver.quit()


def api_segment(base, data, model="", confidence=False):
    """The API's answer for the page's default settings (single scale, no flip)."""
    boundary = "----semsegtest"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"scene.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    query = f"scales=single&flip=false&model={model}" + ("&confidence=true" if confidence else "")
    req = urllib.request.Request(base + f"api/segment?{query}", data=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=WAIT_S) as res:
        return json.load(res)


def interior_pixel(labels, k):
    """A pixel of class k whose 7x7 neighbourhood is all k (robust to rounding)."""
    ys, xs = np.nonzero(labels == k)
    h, w = labels.shape
    for y, x in zip(ys, xs):
        if 3 <= y < h - 3 and 3 <= x < w - 3 and (labels[y - 3:y + 4, x - 3:x + 4] == k).all():
            return int(x), int(y)
    raise AssertionError(f"no interior pixel of class {k}")


def hover_and_check(browser, overlay, rect, readout, labels, by_id, k):
    """Point at an interior pixel of class k; the readout names the API's class there."""
    h, w = labels.shape
    x, y = interior_pixel(labels, k)
    dx = round((x + 0.5) * rect[0] / w - rect[0] / 2)
    dy = round((y + 0.5) * rect[1] / h - rect[1] / 2)
    ActionChains(browser).move_to_element_with_offset(overlay, dx, dy).perform()
    WebDriverWait(browser, WAIT_S).until(lambda d: readout.get_attribute("data-class-id") == str(k))
    rx, ry = int(readout.get_attribute("data-x")), int(readout.get_attribute("data-y"))
    assert abs(rx - x) <= 1 and abs(ry - y) <= 1
    assert readout.text == f"{by_id[int(labels[ry, rx])]['name']} ({rx}, {ry})"
    assert readout.is_displayed()


def in_view(browser, element):
    """Scroll ``element`` wholly into view; its [width, height] (CSS px)."""
    r = browser.execute_script("arguments[0].scrollIntoView({block: 'center'});"
                               "const r = arguments[0].getBoundingClientRect();"
                               "return [r.width, r.height, r.top, r.bottom, window.innerHeight];",
                               element)
    assert 0 <= r[2] and r[3] <= r[4]
    return r[:2]


def upload(browser, base, path):
    browser.get(base)
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.execute_script("return document.querySelectorAll('#model option').length") > 0)
    browser.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#legend li") or d.find_element(By.ID, "error").text)
    assert browser.find_element(By.ID, "error").text == ""


def test_page_segments_an_upload_like_the_api(server, browser, tmp_path):
    arr = photo(120, 160)
    path = tmp_path / "scene.png"
    Image.fromarray(arr).save(path)
    answer = api_segment(server, encode(arr))
    labels = read_label_png(base64.b64decode(answer["labels_png"]))
    assert len(answer["classes"]) >= 2

    upload(browser, server, path)
    rows = browser.find_elements(By.CSS_SELECTOR, "#legend li")
    assert [r.find_element(By.CLASS_NAME, "name").text for r in rows] == \
        [c["name"] for c in answer["classes"]]
    assert [r.find_element(By.CLASS_NAME, "pct").text for r in rows] == \
        [f"{c['percent']:.2f}%" for c in answer["classes"]]
    assert "160×120" in browser.find_element(By.ID, "timing").text

    # hover: the readout names the API's class under the cursor
    overlay = browser.find_element(By.ID, "overlay")
    # wholly in view, so that offsets from the element's centre are from its in-view centre
    rect = in_view(browser, overlay)
    readout = browser.find_element(By.ID, "readout")
    by_id = {c["id"]: c for c in answer["classes"]}
    for cls in answer["classes"][:2]:
        hover_and_check(browser, overlay, rect, readout, labels, by_id, cls["id"])

    # clicking a legend entry highlights that class and dims the rest
    second = answer["classes"][1]
    rows[1].click()
    assert "active" in rows[1].get_attribute("class")
    assert all("dimmed" in r.get_attribute("class") for r in rows if r != rows[1])
    pixel = "return Array.from(arguments[0].getContext('2d').getImageData(arguments[1], arguments[2], 1, 1).data);"
    sx, sy = interior_pixel(labels, second["id"])
    ox, oy = interior_pixel(labels, answer["classes"][0]["id"])
    assert browser.execute_script(pixel, overlay, sx, sy) == \
        [int(second["color"][i:i + 2], 16) for i in (1, 3, 5)] + [255]
    assert browser.execute_script(pixel, overlay, ox, oy) == [0, 0, 0, 170]
    browser.save_screenshot(str(tmp_path / "page.png"))

    # side-by-side view, downloads
    browser.find_element(By.CSS_SELECTOR, "input[name=view][value=side]").click()
    assert browser.find_element(By.ID, "labels").is_displayed()
    assert not overlay.is_displayed()
    href = browser.find_element(By.ID, "dl-result").get_attribute("href")
    with urllib.request.urlopen(href, timeout=WAIT_S) as res:
        pair = np.asarray(Image.open(res))
    assert pair.shape == (120, 320, 3) and np.array_equal(pair[:, :160], arr)
    with Image.open(tmp_path / "page.png") as shot:
        assert shot.size[0] >= 1000


def test_phone_sized_window_has_no_sideways_scroll(server, browser, tmp_path):
    browser.set_window_size(390, 844)
    path = tmp_path / "scene.png"
    Image.fromarray(photo(120, 160)).save(path)
    upload(browser, server, path)
    assert browser.execute_script(
        "const e = document.documentElement; return e.scrollWidth <= e.clientWidth")
    stage = browser.find_element(By.ID, "stage").rect
    legend = browser.find_element(By.TAG_NAME, "aside").rect
    assert legend["y"] >= stage["y"] + stage["height"]  # legend below the image
    width = browser.execute_script("return document.documentElement.clientWidth")
    assert browser.find_element(By.ID, "overlay").rect["width"] >= 0.9 * width  # photo fills it
    browser.save_screenshot(str(tmp_path / "phone.png"))


DROP_OR_PASTE = """
const [kind, width, height, done] = arguments;
const canvas = document.createElement("canvas");
canvas.width = width; canvas.height = height;
const ctx = canvas.getContext("2d");
const grad = ctx.createLinearGradient(0, 0, width, height);
grad.addColorStop(0, "#204080"); grad.addColorStop(1, "#e0c040");
ctx.fillStyle = grad; ctx.fillRect(0, 0, width, height);
canvas.toBlob((blob) => {
  const data = new DataTransfer();
  data.items.add(new File([blob], `${kind}.png`, { type: "image/png" }));
  const event = kind === "drop"
    ? new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true })
    : new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true });
  (kind === "drop" ? document.getElementById("stage") : document).dispatchEvent(event);
  done();
}, "image/png");
"""


def test_dropped_and_pasted_photos_are_segmented(server, browser):
    browser.get(server)
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.execute_script("return document.querySelectorAll('#model option').length") > 0)
    timing = browser.find_element(By.ID, "timing")
    for kind, width, height in (("drop", 100, 80), ("paste", 90, 70)):
        browser.execute_async_script(DROP_OR_PASTE, kind, width, height)
        WebDriverWait(browser, WAIT_S).until(lambda d: f"{width}×{height} px" in timing.text)
        assert browser.find_elements(By.CSS_SELECTOR, "#legend li")
        assert browser.find_element(By.ID, "error").text == ""


DROP_BYTES = """
const [name, size, text] = arguments;
const data = new DataTransfer();
data.items.add(new File([size ? new Uint8Array(size) : text], name));
window.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
"""


def test_page_shows_why_an_upload_is_refused(server, browser):
    browser.get(server)
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.execute_script("return document.querySelectorAll('#model option').length") > 0)
    error = browser.find_element(By.ID, "error")
    browser.execute_script(DROP_BYTES, "notes.txt", 0, "not a photo")
    WebDriverWait(browser, WAIT_S).until(lambda d: error.text)
    assert "notes.txt: not an image file" in error.text  # the server's message
    browser.execute_script(DROP_BYTES, "huge.jpg", 21 * 2 ** 20, "")
    WebDriverWait(browser, WAIT_S).until(lambda d: "huge.jpg" in error.text)
    assert "21.0 MB is above the server's upload limit of 20 MB" in error.text


def test_model_choice_and_hover_beyond_255_classes(server, browser, tmp_path):
    arr = photo(120, 160)
    path = tmp_path / "scene.png"
    Image.fromarray(arr).save(path)
    answer = api_segment(server, encode(arr), model="wide")
    labels = read_label_png(base64.b64decode(answer["labels_png"]))
    browser.get(server)
    select = browser.find_element(By.ID, "model")
    WebDriverWait(browser, WAIT_S).until(lambda d: select.is_displayed())  # two models: shown
    browser.find_element(By.CSS_SELECTOR, "#model option[value=wide]").click()
    browser.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#legend li"))
    assert "wide" in browser.find_element(By.ID, "timing").text
    names = [li.find_element(By.CLASS_NAME, "name").text
             for li in browser.find_elements(By.CSS_SELECTOR, "#legend li")]
    assert names == [c["name"] for c in answer["classes"]]
    overlay = browser.find_element(By.ID, "overlay")
    rect = in_view(browser, overlay)
    by_id = {c["id"]: c for c in answer["classes"]}
    high = max(by_id)
    assert high > 255  # the packed (16-bit) label map is decoded
    hover_and_check(browser, overlay, rect, browser.find_element(By.ID, "readout"), labels,
                    by_id, high)


CONF_STOPS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"]  # app.js's ramp


def ramp(value):
    """The page's colour for confidence value 0..255 (linear between the stops)."""
    stops = [[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in CONF_STOPS]
    t = value / 255 * (len(stops) - 1)
    i = min(len(stops) - 2, int(t))
    f = t - i
    return [int(np.floor(a + (b - a) * f + 0.5)) for a, b in zip(stops[i], stops[i + 1])]


def test_confidence_layer(server, browser, tmp_path):
    arr = photo(120, 160)
    path = tmp_path / "scene.png"
    Image.fromarray(arr).save(path)
    answer = api_segment(server, encode(arr), confidence=True)
    labels = read_label_png(base64.b64decode(answer["labels_png"]))
    conf = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["confidence_png"]))))
    upload(browser, server, path)
    scale = browser.find_element(By.ID, "conf-scale")
    assert not scale.is_displayed()
    toggle = browser.find_element(By.ID, "confidence")
    toggle.click()  # the first result has no map: the page asks again with confidence=true
    WebDriverWait(browser, WAIT_S).until(lambda d: scale.is_displayed())
    assert [t.text for t in scale.find_elements(By.TAG_NAME, "b")] == \
        ["0%", "25%", "50%", "75%", "100%"]
    assert f"mean confidence {answer['mean_confidence'] * 100:.1f}%" in \
        browser.find_element(By.ID, "timing").text
    overlay = browser.find_element(By.ID, "overlay")
    pixel = ("return Array.from(arguments[0].getContext('2d').getImageData(arguments[1], "
             "arguments[2], 1, 1).data);")
    first = answer["classes"][0]
    x, y = interior_pixel(labels, first["id"])
    assert browser.execute_script(pixel, overlay, x, y) == ramp(int(conf[y, x])) + [255]
    # hover: class, position and the pixel's confidence
    rect = in_view(browser, overlay)
    readout = browser.find_element(By.ID, "readout")
    dx = round((x + 0.5) * rect[0] / 160 - rect[0] / 2)
    dy = round((y + 0.5) * rect[1] / 120 - rect[1] / 2)
    ActionChains(browser).move_to_element_with_offset(overlay, dx, dy).perform()
    WebDriverWait(browser, WAIT_S).until(lambda d: readout.get_attribute("data-confidence"))
    rx, ry = int(readout.get_attribute("data-x")), int(readout.get_attribute("data-y"))
    value = int(conf[ry, rx])
    assert readout.get_attribute("data-confidence") == str(value)
    assert readout.text == (f"{first['name']} ({rx}, {ry}) \u00b7 confidence "
                            f"{int(np.floor(value / 255 * 100 + 0.5))}%")
    # off again: the class colours, no scale
    toggle.click()
    assert not scale.is_displayed()
    assert browser.execute_script(pixel, overlay, x, y) == \
        [int(first["color"][i:i + 2], 16) for i in (1, 3, 5)] + [255]


def test_page_shows_the_progress_of_a_long_request(server, browser, tmp_path, monkeypatch):
    """While the network is held after its first run, the status line counts the
    steps (api/progress); once answered it is cleared."""
    engine = next(iter(SERVED.values())).segmenter.engine
    real, gate = engine.scores, threading.Event()

    def held(img):
        out = real(img)
        assert gate.wait(WAIT_S)
        return out

    monkeypatch.setattr(engine, "scores", held)
    path = tmp_path / "scene.png"
    Image.fromarray(photo(120, 160)).save(path)
    browser.get(server)
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.execute_script("return document.querySelectorAll('#model option').length") > 0)
    browser.find_element(By.ID, "file").send_keys(str(path))
    status = browser.find_element(By.ID, "status")
    try:  # single scale: one network run, then the fusion
        WebDriverWait(browser, WAIT_S).until(lambda d: "Segmenting… 0/2 steps" in status.text)
    finally:
        gate.set()
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#legend li"))
    assert status.text == "" and "scales 56" in browser.find_element(By.ID, "timing").text
