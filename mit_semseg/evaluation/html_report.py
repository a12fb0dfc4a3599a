"""A self-contained HTML page for one evaluation run.

``write_html_report(record, path, panels=...)`` writes one file that opens
from disk with no network and no external asset: styles, script, data and
images are inline. ``record`` is the results dict eval writes as JSON
(``SegmentationMetrics.summary`` plus the run's settings); the page shows
only what is in it:

* the summary numbers (mIoU, pixel accuracy, mean class accuracy, fwIoU,
  mean Dice / F1, overall score, mean boundary IoU when present);
* the per-class table, sortable by clicking a header;
* the confusion matrix as a heatmap drawn by the page's script on a canvas
  from the embedded counts (classes by frequency, colours normalised per
  ground-truth row; hovering a cell names the pair and its count);
* the largest confusions as a list, the per-image mIoU histogram (inline SVG)
  and the worst images (``panels``), embedded as base64 PNG.

The list and the histogram are ``record["top_confusions"]`` and
``record["per_image_histogram"]`` when present (``report_numbers`` computes
both, and eval stores them in its JSON), so the page shows no number the
JSON lacks.

Every string that comes from the record (class names come from user CSVs) is
escaped; the embedded JSON cannot close its script element.

``error_map``, ``panel_tiles`` and ``WorstPanels`` build the panels during an
evaluation: image | ground truth | prediction | errors, downscaled.
"""
from __future__ import annotations

import base64
import heapq
import html
import io
import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

__all__ = ["write_html_report", "render_html_report", "error_map", "panel_tiles",
           "WorstPanels", "top_confusions", "miou_histogram", "report_numbers"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TILE_LABELS = ("image", "ground truth", "prediction", "errors")
_HIST_BINS = 20


# ============================================================================ panels

def error_map(image: np.ndarray, label: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """HxWx3 uint8: wrongly predicted pixels red, correct ones a dimmed grey copy of
    ``image`` (HxWx3 or HxW uint8), unlabeled pixels (``label < 0``) black."""
    label, pred = np.asarray(label), np.asarray(pred)
    img = np.asarray(image)
    if label.shape != pred.shape or img.shape[:2] != label.shape:
        raise ValueError(f"shapes differ: image {img.shape}, label {label.shape}, "
                         f"prediction {pred.shape}")
    gray = img.astype(np.float32)
    if gray.ndim == 3:
        gray = gray[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    dim = (60 + 0.45 * gray).astype(np.uint8)
    out = np.repeat(dim[..., None], 3, axis=2)
    labeled = label >= 0
    wrong = labeled & (pred != label)
    # keep a little of the image's shading in the red so shapes stay visible
    out[wrong] = np.stack([np.full(int(wrong.sum()), 255, np.uint8),
                           (0.25 * gray[wrong]).astype(np.uint8),
                           (0.25 * gray[wrong]).astype(np.uint8)], axis=1)
    out[~labeled] = 0
    return out


def _colorize(labels: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Label map -> HxWx3 uint8 with ``colors[k]``; unlabeled and unknown values black."""
    colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    table = np.concatenate([colors, np.zeros((1, 3), np.uint8)])
    idx = np.where((labels >= 0) & (labels < len(colors)), labels, len(colors))
    return table[idx]


def _shrink(arr: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    # label colours stay exact (nearest); photos and error maps are area-averaged
    resample = Image.NEAREST if nearest else Image.BOX
    return np.asarray(Image.fromarray(arr).resize(size, resample=resample))


def panel_tiles(image: np.ndarray, label: np.ndarray, pred: np.ndarray, colors: np.ndarray,
                *, max_side: int = 160) -> list[np.ndarray]:
    """[image, ground truth, prediction, errors] as HxWx3 uint8 tiles, scaled down so
    the longer side is at most ``max_side``. ``colors``: Kx3 uint8 class colours."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3]
    label, pred = np.asarray(label), np.asarray(pred)
    tiles = [image, _colorize(label, colors), _colorize(pred, colors),
             error_map(image, label, pred)]
    h, w = label.shape
    scale = max_side / max(h, w)
    if scale >= 1:
        return tiles
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return [_shrink(t, size, nearest=i in (1, 2)) for i, t in enumerate(tiles)]


def _png(picture: Any, palette: bool = False) -> tuple[bytes, int, int]:
    """PNG bytes and (width, height) of a uint8 array or of PNG bytes; ``palette``:
    an RGB array is stored with 256 colours (about a third of the bytes for photos)."""
    if isinstance(picture, (bytes, bytearray, memoryview)):
        data = bytes(picture)
        if not data.startswith(_PNG_MAGIC):
            raise ValueError("panel pictures given as bytes must be PNG files")
        with Image.open(io.BytesIO(data)) as im:
            return data, im.width, im.height
    arr = np.asarray(picture)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3
                                                           and arr.shape[2] not in (3, 4)):
        raise ValueError(f"panel pictures must be uint8 HxW, HxWx3 or HxWx4 arrays or PNG "
                         f"bytes, got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    if palette and arr.ndim == 3 and arr.shape[2] == 3:
        im = im.quantize(256, method=Image.Quantize.FASTOCTREE)
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue(), arr.shape[1], arr.shape[0]


class WorstPanels:
    """Keeps the ``n`` lowest-scoring images' panels while an evaluation runs.

    ``offer(score, name, image, label, pred, order=...)`` builds the tiles only
    when the image is among the worst so far (NaN scores are skipped); images
    rank by (score, order), ``order`` defaulting to the number offered before,
    so equal scores keep the earlier image. ``merge`` adds the panels another
    keeper holds (e.g. another process's share of the images, offered with
    their indices in the whole list): the result is what one keeper offered
    every image would hold. ``panels()`` returns them worst first, ready for
    ``write_html_report``. Tiles are ``panel_tiles`` as PNG, the photo and error
    tiles with a 256-colour palette. Picklable.
    """

    def __init__(self, n: int, colors: np.ndarray, *, max_side: int = 160) -> None:
        self.n, self.colors, self.max_side = max(0, int(n)), np.asarray(colors), int(max_side)
        # max-heap on (score, order): items (-score, -order, name, tiles)
        self._heap: list[tuple[float, int, str, list[bytes]]] = []
        self._seen = 0

    def _admits(self, score: float, order: int) -> bool:
        if len(self._heap) < self.n:
            return True
        top = self._heap[0]
        return (score, order) < (-top[0], -top[1])

    def _push(self, item: tuple[float, int, str, list[bytes]]) -> None:
        if len(self._heap) < self.n:
            heapq.heappush(self._heap, item)
        else:
            heapq.heapreplace(self._heap, item)

    def offer(self, score: float, name: str, image: np.ndarray, label: np.ndarray,
              pred: np.ndarray, *, order: int | None = None) -> bool:
        """Keep this image if it is among the ``n`` worst so far; returns whether it was."""
        if self.n <= 0 or score is None or not math.isfinite(score):
            return False
        order = self._seen if order is None else int(order)
        self._seen += 1
        if not self._admits(float(score), order):
            return False
        tiles = [_png(t, palette=i in (0, 3))[0] for i, t in enumerate(
            panel_tiles(image, label, pred, self.colors, max_side=self.max_side))]
        self._push((-float(score), -order, str(name), tiles))
        return True

    def merge(self, other: "WorstPanels") -> "WorstPanels":
        """Add ``other``'s panels (in place; orders must not collide); returns self."""
        for item in other._heap:
            if self.n > 0 and self._admits(-item[0], -item[1]):
                self._push(item)
        self._seen += other._seen
        return self

    def panels(self) -> list[tuple[str, list[bytes]]]:
        """(name, [image, ground truth, prediction, errors] PNG bytes), worst first."""
        return [(name, tiles) for _, _, name, tiles in
                sorted(self._heap, key=lambda it: (-it[0], -it[1]))]

    def ranking(self) -> list[tuple[str, float, int]]:
        """(name, score, order) of the kept images, worst first."""
        return [(name, -neg, -order) for neg, order, name, _ in
                sorted(self._heap, key=lambda it: (-it[0], -it[1]))]


# ============================================================================ numbers

def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _pct(x: Any, digits: int = 2) -> str:
    v = _num(x)
    return "\u2013" if v is None else f"{v * 100:.{digits}f}%"


def _share(x: Any) -> str:
    v = _num(x)
    if v is None:
        return "\u2013"
    return f"{v * 100:.2f}%" if v >= 0.001 or v == 0 else f"{v * 100:.3f}%"


def _count(x: Any) -> str:
    v = _num(x)
    return "\u2013" if v is None else f"{int(v):,}"


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _class_names(record: Mapping[str, Any], k: int) -> list[str]:
    names = [f"class_{i}" for i in range(k)]
    for row in record.get("per_class") or []:
        i = row.get("index")
        if isinstance(i, int) and 0 <= i < k and row.get("name") is not None:
            names[i] = str(row["name"])
    return names


def top_confusions(confusion: Any, names: Sequence[str], n: int = 15,
                   min_fraction: float = 1e-4) -> list[dict[str, Any]]:
    """The ``n`` off-diagonal cells with the largest share of their ground-truth row,
    among cells holding at least ``min_fraction`` of all labeled pixels (at least
    one): dicts with ``gt``, ``pred`` (names), ``gt_index``, ``pred_index``,
    ``count`` and ``share`` (of the ground-truth class's pixels)."""
    conf = np.asarray(confusion, dtype=np.int64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1] or conf.size == 0:
        return []
    rows = conf.sum(1)
    off = conf.copy()
    np.fill_diagonal(off, 0)
    floor = max(1, int(math.ceil(min_fraction * conf.sum())))
    i, j = np.nonzero(off >= floor)
    if not i.size:
        return []
    share = off[i, j] / rows[i]
    order = np.lexsort((-off[i, j], -share))[:n]
    return [{"gt": names[i[o]], "pred": names[j[o]], "gt_index": int(i[o]),
             "pred_index": int(j[o]), "count": int(off[i[o], j[o]]), "share": float(share[o])}
            for o in order]


# ============================================================================ sections

_SUMMARY = (
    ("mean_iou", "Mean IoU", "over all {k} classes"),
    ("pixel_accuracy", "Pixel accuracy", "correct / labeled pixels"),
    ("mean_class_accuracy", "Mean class acc.", "mean recall over classes in the labels"),
    ("frequency_weighted_iou", "Freq.-weighted IoU", "IoU weighted by pixel share"),
    ("mean_dice", "Mean Dice / F1", "over classes labeled or predicted"),
    ("overall_score", "Overall score", "(mIoU + pixel accuracy) / 2"),
    ("mean_boundary_iou", "Mean boundary IoU", "band {ratio} \u00d7 diagonal"),
)

_RUN_KEYS = (
    ("checkpoint", "checkpoint"), ("list_val", "validation list"), ("num_images", "images"),
    ("labeled_pixels", "labeled pixels"), ("imgSizes", "scales"), ("flip", "flip"),
    ("precision", "precision"), ("backend", "backend"), ("mode", "mode"),
    ("inference_time_per_image_s", "inference s / image"),
)


def _summary_html(record: Mapping[str, Any], k: int) -> str:
    cards = []
    for key, title, hint in _SUMMARY:
        value = record.get(key)
        if key == "mean_dice" and value is None:
            value = record.get("mean_f1")
        if key == "mean_boundary_iou" and _num(value) is None:
            continue
        hint = hint.format(k=k, ratio=record.get("boundary_dilation_ratio", ""))
        exact = "" if _num(value) is None else f' title="{_num(value)!r}"'
        cards.append(f'<div class="card" data-key="{key}"><div class="card-t" title="{title}">'
                     f'{title}</div>'
                     f'<div class="card-v"{exact}>{_pct(value)}</div>'
                     f'<div class="card-h">{_esc(hint)}</div></div>')
    return '<div class="cards">' + "".join(cards) + "</div>"


def _run_html(record: Mapping[str, Any]) -> str:
    items = []
    for key, title in _RUN_KEYS:
        if key not in record or record[key] is None:
            continue
        v = record[key]
        if key in ("num_images", "labeled_pixels"):
            text = _count(v)
        elif key == "inference_time_per_image_s" and _num(v) is not None:
            text = f"{_num(v):.4f}"
        elif isinstance(v, (list, tuple)):
            text = ", ".join(str(x) for x in v)
        else:
            text = str(v)
        items.append(f"<div><dt>{_esc(title)}</dt><dd>{_esc(text)}</dd></div>")
    return '<dl class="run">' + "".join(items) + "</dl>" if items else ""


_COLUMNS = (
    # key, header, kind, formatter; header tooltips in _COLUMN_HELP
    ("index", "#", "num", lambda v: _count(v)),
    ("name", "Class", "text", None),
    ("iou", "IoU", "num", _pct),
    ("accuracy", "Accuracy", "num", _pct),
    ("precision", "Precision", "num", _pct),
    ("f1", "F1 / Dice", "num", _pct),
    ("pixel_share", "Pixels", "num", _share),
    ("images", "Images", "num", _count),
    ("boundary_iou", "Boundary IoU", "num", _pct),
)


_COLUMN_HELP = {
    "index": "class index", "iou": "intersection / union over the set",
    "accuracy": "recall: correct / labeled pixels of the class",
    "precision": "correct / pixels predicted as the class",
    "f1": "2 x correct / (labeled + predicted pixels)",
    "pixel_share": "share of all labeled pixels", "images": "images whose labels contain the class",
    "boundary_iou": "IoU of the boundary bands, summed over the set",
}


def _table_html(record: Mapping[str, Any]) -> str:
    rows = list(record.get("per_class") or [])
    if not rows:
        return '<p class="muted">No per-class results in the record.</p>'
    optional = {"images", "boundary_iou"}
    cols = [c for c in _COLUMNS if c[0] not in optional
            or any(_num(r.get(c[0])) is not None for r in rows)]
    share_of = {id(r): _num(r.get("pixel_share")) or 0.0 for r in rows}
    rows.sort(key=lambda r: (-share_of[id(r)], r.get("index", 0)))
    head = []
    for key, title, kind, _ in cols:
        sort = ' aria-sort="descending"' if key == "pixel_share" else ""
        help_ = f' title="{_esc(_COLUMN_HELP[key])}"' if key in _COLUMN_HELP else ""
        head.append(f'<th data-type="{kind}" data-key="{key}"{sort}{help_} tabindex="0">'
                    f'{_esc(title)}</th>')
    body = []
    for r in rows:
        cells = []
        for key, _, kind, fmt in cols:
            v = r.get(key)
            if kind == "text":
                name = _esc(v if v is not None else f"class_{r.get('index')}")
                cells.append(f'<td class="name" data-v="{name}">{name}</td>')
                continue
            num = _num(v)
            data = "" if num is None else repr(num)
            style = ""
            if key in ("iou", "f1", "boundary_iou") and num is not None:
                style = f' class="bar" style="--v:{max(0.0, min(1.0, num)):.4f}"'
            cells.append(f'<td data-v="{data}"{style}>{fmt(v)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return ('<div class="table-box"><table id="classes" class="sortable"><thead><tr>'
            + "".join(head) + "</tr></thead><tbody>" + "\n".join(body)
            + "</tbody></table></div>")


def _confusions_html(items: Sequence[Mapping[str, Any]]) -> str:
    if not items:
        return '<p class="muted">No confusions between labeled classes.</p>'
    out = []
    for it in items:
        gt, pred = _esc(it["gt"]), _esc(it["pred"])
        out.append(f'<li><span class="pair"><b>{gt}</b> \u2192 <b>{pred}</b></span>: '
                   f'{it["share"] * 100:.1f}% of {gt} pixels '
                   f'<span class="muted">({it["count"]:,} px)</span></li>')
    return '<ol class="confusions">' + "".join(out) + "</ol>"


def _nice_step(top: float) -> int:
    raw = max(1.0, top / 4)
    base = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * base >= raw:
            return int(m * base)
    return int(10 * base)


def miou_histogram(values: Iterable[Any], bins: int = _HIST_BINS) -> dict[str, Any] | None:
    """The per-image mIoU histogram the page draws: ``bins`` equal bins over [0, 1]
    (values clipped into it; undefined ones left out) with their ``counts``, and
    the ``images`` counted, their ``median`` and ``mean``; None without values."""
    vals = np.array([v for v in (_num(x) for x in values) if v is not None], dtype=float)
    if not vals.size:
        return None
    counts, _ = np.histogram(np.clip(vals, 0, 1), bins=bins, range=(0, 1))
    return {"bins": int(bins), "range": [0.0, 1.0], "counts": counts.tolist(),
            "images": int(vals.size), "median": float(np.median(vals)),
            "mean": float(vals.mean())}


def report_numbers(record: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers the page shows that are not in ``SegmentationMetrics.summary``,
    computed from ``record``: ``top_confusions`` (``top_confusions``) and
    ``per_image_histogram`` (``miou_histogram``, None without per-image results).
    Put into the record, the page shows these very values."""
    k = _num_class(record)
    names = _class_names(record, k)
    conf = record.get("confusion")
    per_image = record.get("per_image") or []
    return {"top_confusions": [] if conf is None else top_confusions(conf, names),
            "per_image_histogram": miou_histogram(r.get("mean_iou") for r in per_image
                                                  if isinstance(r, Mapping))}


def _histogram_svg(hist: Mapping[str, Any] | None) -> str:
    if not hist or not hist.get("counts"):
        return '<p class="muted">Per-image results were not recorded.</p>'
    counts = np.asarray(hist["counts"], dtype=np.int64)
    bins = len(counts)
    W, H, L, R, T, B = 560, 240, 44, 22, 14, 40
    pw, ph = W - L - R, H - T - B
    step = _nice_step(float(counts.max()))
    ymax = max(step, int(math.ceil(counts.max() / step)) * step)
    parts = [f'<svg id="hist" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
             f'aria-label="per-image mean IoU histogram">']
    for y in range(0, ymax + 1, step):
        py = T + ph - ph * y / ymax
        parts.append(f'<line x1="{L}" x2="{W - R}" y1="{py:.1f}" y2="{py:.1f}" class="grid"/>'
                     f'<text x="{L - 6}" y="{py + 4:.1f}" text-anchor="end">{y}</text>')
    bw = pw / bins
    for b, c in enumerate(counts):
        lo, hi = b / bins, (b + 1) / bins
        x, hgt = L + b * bw, ph * c / ymax
        parts.append(f'<rect x="{x + 1:.1f}" y="{T + ph - hgt:.1f}" width="{bw - 2:.1f}" '
                     f'height="{hgt:.1f}"><title>mIoU {lo * 100:.0f}\u2013{hi * 100:.0f}%: '
                     f'{c} image{"s" if c != 1 else ""}</title></rect>')
    for q in (0, 0.25, 0.5, 0.75, 1):
        px = L + pw * q
        parts.append(f'<text x="{px:.1f}" y="{T + ph + 16}" text-anchor="middle">'
                     f'{q * 100:.0f}%</text>')
    parts.append(f'<text x="{L + pw / 2:.1f}" y="{H - 4}" text-anchor="middle" class="axis">'
                 f'per-image mIoU (classes present in the image)</text>')
    median, mean = _num(hist.get("median")) or 0.0, _num(hist.get("mean")) or 0.0
    for value, cls in ((median, "med"), (mean, "mean")):
        px = L + pw * min(1.0, max(0.0, value))
        parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{T}" y2="{T + ph}" class="{cls}"/>')
    parts.append("</svg>")
    caption = (f'<p class="muted">{_count(hist.get("images", int(counts.sum())))} images; '
               f'median {median * 100:.1f}%, mean {mean * 100:.1f}% '
               f'(dashed: median, dotted: mean)</p>')
    return "".join(parts) + caption


def _panels_html(panels: Sequence[Any] | None, record: Mapping[str, Any]) -> str:
    if not panels:
        return '<p class="muted">No image panels were given.</p>'
    per_image = {str(r.get("name")): r for r in (record.get("per_image") or [])
                 if isinstance(r, Mapping)}
    figures = []
    for rank, panel in enumerate(panels, 1):
        if len(panel) not in (2, 3):
            raise ValueError("each panel must be (name, pictures) or (name, pictures, caption)")
        name, pictures = panel[0], panel[1]
        caption = panel[2] if len(panel) == 3 else None
        if isinstance(pictures, (bytes, bytearray, memoryview, np.ndarray)):
            pictures = [pictures]
        labels = _TILE_LABELS if len(pictures) == len(_TILE_LABELS) else [""] * len(pictures)
        if caption is None:
            stats = per_image.get(str(name))
            caption = "" if stats is None else (f"mIoU {_pct(stats.get('mean_iou'), 1)}, "
                                                f"accuracy {_pct(stats.get('pixel_accuracy'), 1)}")
        tiles = []
        for pic, label in zip(pictures, labels):
            data, w, h = _png(pic)
            # small pictures are shown enlarged: keep their pixels square
            pixelated = ' class="px"' if max(w, h) < 128 else ""
            src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
            tiles.append(f'<div class="tile"><img{pixelated} src="{src}" width="{w}" '
                         f'height="{h}" alt="{_esc(label or name)}">'
                         f'<span>{_esc(label)}</span></div>')
        figures.append(f'<figure class="panel"><figcaption title="{_esc(name)}"><b>{rank}. '
                       f'{_esc(name)}</b><br><span class="muted">{_esc(caption)}</span>'
                       f'</figcaption>'
                       f'<div class="tiles" style="--n:{len(tiles)}">{"".join(tiles)}</div>'
                       f'</figure>')
    legend = ('<p class="legend"><i class="sw" style="background:#ff3030"></i>wrong '
              '<i class="sw" style="background:#8a8a8a"></i>right '
              '<i class="sw" style="background:#000"></i>unlabeled</p>')
    return legend + '<div class="panels">' + "".join(figures) + "</div>"


def _heatmap_data(record: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any] | None:
    conf = record.get("confusion")
    if conf is None:
        return None
    conf = np.asarray(conf, dtype=np.int64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1] or conf.shape[0] != len(names):
        raise ValueError(f"record['confusion'] must be {len(names)}x{len(names)}, "
                         f"got shape {conf.shape}")
    rows, cols = conf.sum(1), conf.sum(0)
    keep = np.flatnonzero((rows > 0) | (cols > 0))
    order = keep[np.lexsort((keep, -rows[keep]))]  # by labeled pixels, then index
    return {"names": [names[i] for i in order], "index": order.tolist(),
            "confusion": conf[np.ix_(order, order)].tolist(),
            "absent": int(len(names) - len(order)),
            "unlabeled_rows": int((rows[order] == 0).sum())}


def _scale_html(title: str, cls: str, ticks: Sequence[tuple[float, str]]) -> str:
    marks = "".join(f'<b style="left:{pos * 100:.1f}%">{text}</b>' for pos, text in ticks)
    return (f'<span class="scale"><span>{title}</span><span class="bar"><i class="grad {cls}">'
            f'</i><span class="ticks">{marks}</span></span></span>')


def _legend_html() -> str:
    off = [(math.sqrt(s), f"{s * 100:g}%") for s in (0, 0.01, 0.1, 0.25, 1)]
    return ('<div class="scales">'
            + _scale_html("correct (diagonal)", "diag", [(0, "0%"), (0.5, "50%"), (1, "100%")])
            + _scale_html("confused (off-diagonal, square-root scale)", "off", off)
            + "</div>")


def _script_json(data: Any) -> str:
    text = json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    # nothing inside may end the script element or start a comment
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


# ============================================================================ page

def _num_class(record: Mapping[str, Any]) -> int:
    k = record.get("num_class")
    if isinstance(k, int):
        return k
    conf = record.get("confusion")
    return len(conf) if conf is not None else len(record.get("per_class") or [])


def render_html_report(record: Mapping[str, Any], *, panels: Sequence[Any] | None = None,
                       title: str | None = None) -> str:
    """The report page as a string (see ``write_html_report``)."""
    k = _num_class(record)
    names = _class_names(record, k)
    heat = _heatmap_data(record, names)
    derived = {key: record[key] for key in ("top_confusions", "per_image_histogram")
               if key in record}
    if len(derived) < 2:
        derived = {**report_numbers(record), **derived}
    title = title or ("Evaluation report: " + str(record["checkpoint"])
                      if record.get("checkpoint") else "Evaluation report")
    if heat is None or not heat["names"]:
        heat_html = ('<p class="muted">The record holds no confusion counts.</p>' if heat is None
                     else '<p class="muted">No labeled pixels.</p>')
        conf_html = heat_html
    else:
        absent = (f" {heat['absent']} class(es) absent from labels and predictions are left out."
                  if heat["absent"] else "")
        if heat["unlabeled_rows"]:
            absent += " Grey rows: classes predicted but never labeled."
        heat_html = (
            f'<p class="muted">Rows: ground truth, columns: prediction, classes by labeled '
            f'pixels (most first). Colour: share of the row\'s pixels.{_esc(absent)} '
            f'Hover a cell for its count.</p>'
            + _legend_html() +
            '<div id="heat-wrap"><canvas id="heat" role="img" aria-label="confusion matrix">'
            '</canvas><canvas id="heat-over"></canvas>'
            '<div id="heat-tip" hidden></div></div>')
        conf_html = _confusions_html(derived["top_confusions"])
    data_json = _script_json(heat or {"names": [], "index": [], "confusion": []})
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{_esc(title)}</title>
<style>{_CSS}</style></head>
<body><main>
<header><h1>{_esc(title)}</h1>{_run_html(record)}</header>
<section><h2>Summary</h2>{_summary_html(record, k)}</section>
<div class="two">
<section><h2>Per class</h2><p class="muted">Click a header to sort. Accuracy = recall;
precision and F1 are undefined (\u2013) for classes never predicted / never present.</p>
{_table_html(record)}</section>
<div class="side">
<section><h2>Per-image mIoU</h2>{_histogram_svg(derived["per_image_histogram"])}</section>
<section><h2>Top confusions</h2><p class="muted">Share of the ground-truth class's pixels
predicted as another class (cells with at least 0.01% of all labeled pixels).</p>
{conf_html}</section>
</div></div>
<section><h2>Confusion matrix</h2>{heat_html}</section>
<section><h2>Worst images</h2>{_panels_html(panels, record)}</section>
<footer>mit_semseg evaluation report &middot; {len(names)} classes</footer>
</main>
<script type="application/json" id="report-data">{data_json}</script>
<script>{_JS}</script>
</body></html>
"""


def write_html_report(record: Mapping[str, Any], path: str, *,
                      panels: Sequence[Any] | None = None) -> str:
    """Write the report page for ``record`` to ``path`` (atomically); returns ``path``.

    ``record``: the JSON-able results (``SegmentationMetrics.summary`` keys:
    the summary numbers, ``per_class``, ``confusion``, optionally ``per_image``
    and the run's settings such as ``checkpoint``). ``panels``: worst images
    first, each ``(name, pictures)`` or ``(name, pictures, caption)`` where
    ``pictures`` is [image, ground truth, prediction, errors] or one
    picture, each a uint8 array (HxW, HxWx3, HxWx4) or PNG bytes. Without a
    caption, the image's mIoU and accuracy are looked up by name in
    ``record["per_image"]``.
    """
    page = render_html_report(record, panels=panels)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(page)
    os.replace(tmp, path)
    return path


_CSS = """
:root{--fg:#1d2330;--muted:#667085;--line:#e3e6ec;--bg:#f5f6f8;--accent:#2f5fb3}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
main{max-width:1360px;margin:0 auto;padding:20px 20px 40px}
h1{font-size:22px;margin:0 0 8px;word-break:break-all}
h2{font-size:16px;margin:0 0 10px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:14px 16px;
margin:0 0 16px;min-width:0}
.muted{color:var(--muted)}
p{margin:0 0 8px}
.run{display:flex;flex-wrap:wrap;gap:4px 22px;margin:0 0 14px;color:var(--muted)}
.run div{display:flex;gap:6px}.run dt{font-weight:600}.run dd{margin:0;color:var(--fg)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:10px}
.card{border:1px solid var(--line);border-radius:6px;padding:10px 12px;background:#fafbfc}
.card-t{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.03em;
white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.card-v{font-size:26px;font-weight:650;font-variant-numeric:tabular-nums}
.card-h{font-size:12px;color:var(--muted)}
.two{display:grid;grid-template-columns:minmax(0,1.7fr) minmax(0,1fr);gap:16px;
align-items:start}
.side section{margin-bottom:16px}
.table-box{max-height:640px;overflow:auto;border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums;font-size:13px}
th,td{padding:3px 7px;text-align:right;white-space:nowrap;border-bottom:1px solid #eef0f3}
th{position:sticky;top:0;background:#f0f2f5;cursor:pointer;user-select:none;z-index:1;
font-weight:600}
th:hover{background:#e4e8ee}
th[aria-sort=ascending]::after{content:" \\25B2";font-size:10px}
th[aria-sort=descending]::after{content:" \\25BC";font-size:10px}
td.name,th[data-key=name]{text-align:left;max-width:220px;overflow:hidden;text-overflow:ellipsis}
tbody tr:hover{background:#f3f6fb}
td.bar{background:linear-gradient(90deg,#d9e5f7 calc(var(--v)*100%),transparent 0)}
ol.confusions{margin:0;padding-left:26px;column-gap:24px}
ol.confusions li{margin:2px 0}
.pair b{font-weight:600}
svg text{font-size:11px;fill:#4a5263}
svg .axis{font-size:12px;fill:var(--fg)}
svg rect{fill:#4a78c2}svg rect:hover{fill:#2f5fb3}
svg .grid{stroke:#e8eaef}
svg .med{stroke:#d9480f;stroke-dasharray:5 3;stroke-width:1.5}
svg .mean{stroke:#111;stroke-dasharray:1.5 2.5;stroke-width:1.5}
#hist{max-width:100%;height:auto}
.scales{display:flex;flex-wrap:wrap;gap:8px 36px;font-size:12px;color:var(--muted);
margin:6px 0 14px}
.scale{display:flex;gap:10px;align-items:flex-start}
.scale .bar{display:block;width:220px;padding:0 8px}
.grad{display:block;height:11px;border:1px solid #d5d9e0;border-radius:2px}
.grad.diag{background:linear-gradient(90deg,#eef3fb,#1f4e9c)}
.grad.off{background:linear-gradient(90deg,#fff,#d7301f)}
.ticks{display:block;position:relative;height:15px;font-size:11px}
.ticks b{position:absolute;top:1px;font-weight:400;transform:translateX(-50%)}
#heat-wrap{position:relative;width:100%}
#heat,#heat-over{position:absolute;left:0;top:0}
#heat{position:relative}
#heat-over{pointer-events:none}
#heat-tip{position:absolute;z-index:2;pointer-events:none;background:rgba(20,24,33,.92);
color:#fff;padding:5px 8px;border-radius:4px;font-size:12px;white-space:pre;max-width:420px}
.legend{display:flex;gap:6px;align-items:center;color:var(--muted);font-size:12px}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;margin-left:8px}
.panels{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:12px}
.panel{margin:0;border:1px solid var(--line);border-radius:6px;padding:8px;background:#fafbfc;
min-width:0}
.panel figcaption{margin-bottom:6px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.tiles{display:grid;grid-template-columns:repeat(var(--n),minmax(0,1fr));gap:6px}
.tile{display:flex;flex-direction:column;align-items:center;font-size:11px;color:var(--muted);
min-width:0}
.tile img{display:block;width:100%;height:auto;border-radius:2px}
img.px{image-rendering:pixelated}
footer{color:var(--muted);font-size:12px;text-align:center}
@media (max-width:1000px){.two{grid-template-columns:1fr}}
"""

_JS = r"""
"use strict";
(function () {
  // ----------------------------------------------------------- sortable tables
  function cellValue(row, col, type) {
    var v = row.cells[col].getAttribute("data-v");
    if (v === null || v === "") return null;
    return type === "num" ? parseFloat(v) : v.toLowerCase();
  }
  function sortTable(table, col, th) {
    var type = th.getAttribute("data-type");
    var asc = th.getAttribute("aria-sort") !== "ascending";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.forEach(function (r, i) { r._pos = i; });
    rows.sort(function (a, b) {
      var x = cellValue(a, col, type), y = cellValue(b, col, type);
      if (x === null || y === null) {  // missing values last either way
        return x === y ? a._pos - b._pos : (x === null ? 1 : -1);
      }
      var c = x < y ? -1 : x > y ? 1 : 0;
      return (asc ? c : -c) || a._pos - b._pos;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) {
      h.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.addEventListener("click", function () { sortTable(table, col, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortTable(table, col, th); }
      });
    });
  });

  // ----------------------------------------------------------- confusion heatmap
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var wrap = document.getElementById("heat-wrap");
  if (!wrap || !data.names.length) return;
  var names = data.names, conf = data.confusion, n = names.length;
  var rowSum = conf.map(function (r) { return r.reduce(function (a, b) { return a + b; }, 0); });
  var canvas = document.getElementById("heat"), over = document.getElementById("heat-over");
  var tip = document.getElementById("heat-tip");
  var geo = null;

  function mix(a, b, t) {
    return "rgb(" + [0, 1, 2].map(function (i) { return Math.round(a[i] + (b[i] - a[i]) * t); })
      .join(",") + ")";
  }
  var DIAG0 = [238, 243, 251], DIAG1 = [31, 78, 156], OFF0 = [255, 255, 255], OFF1 = [215, 48, 31];

  function draw() {
    var width = wrap.clientWidth;
    var ctx = canvas.getContext("2d");
    // the label margin depends on the font, the font on the cell size: settle in two passes
    var margin = 120, cell = 2, font = 8, labels = false;
    for (var pass = 0; pass < 2; pass++) {
      cell = Math.max(2, Math.min(18, Math.floor((width - margin - 2) / n)));
      labels = cell >= 6;
      font = Math.min(12, cell + 1);
      ctx.font = font + "px system-ui, sans-serif";
      var longest = 0;
      if (labels) {
        names.forEach(function (s) { longest = Math.max(longest, ctx.measureText(s).width); });
      }
      margin = labels ? Math.min(170, Math.ceil(longest) + 10) : 28;
    }
    var size = margin + cell * n + 2;
    var dpr = window.devicePixelRatio || 1;
    [canvas, over].forEach(function (c) {
      c.width = Math.round(size * dpr); c.height = Math.round(size * dpr);
      c.style.width = size + "px"; c.style.height = size + "px";
    });
    wrap.style.height = size + "px";
    ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, size, size);
    for (var i = 0; i < n; i++) {
      var row = conf[i], total = rowSum[i];
      if (!total) {
        ctx.fillStyle = "#f4f5f7";
        ctx.fillRect(margin, margin + i * cell, n * cell, cell);
        continue;
      }
      for (var j = 0; j < n; j++) {
        var v = row[j];
        if (!v) continue;
        var s = v / total;
        ctx.fillStyle = i === j ? mix(DIAG0, DIAG1, s) : mix(OFF0, OFF1, Math.sqrt(s));
        ctx.fillRect(margin + j * cell, margin + i * cell, cell, cell);
      }
    }
    ctx.strokeStyle = "#c8ccd4"; ctx.lineWidth = 1;
    ctx.strokeRect(margin - 0.5, margin - 0.5, n * cell + 1, n * cell + 1);
    ctx.fillStyle = "#3a4150";
    ctx.font = font + "px system-ui, sans-serif";
    if (labels) {
      ctx.textBaseline = "middle"; ctx.textAlign = "right";
      names.forEach(function (s, i) {
        ctx.fillText(s, margin - 4, margin + (i + 0.5) * cell, margin - 8);
      });
      ctx.save(); ctx.rotate(-Math.PI / 2); ctx.textAlign = "left";
      names.forEach(function (s, j) {
        ctx.fillText(s, -(margin - 4), margin + (j + 0.5) * cell, margin - 8);
      });
      ctx.restore();
    } else {
      ctx.textBaseline = "middle"; ctx.textAlign = "center";
      ctx.fillText("prediction \u2192", margin + n * cell / 2, margin / 2);
      ctx.save(); ctx.translate(margin / 2, margin + n * cell / 2); ctx.rotate(-Math.PI / 2);
      ctx.fillText("ground truth \u2192", 0, 0); ctx.restore();
    }
    geo = {cell: cell, margin: margin, size: size, dpr: dpr};
    canvas.setAttribute("data-cell", cell);
    canvas.setAttribute("data-margin", margin);
    highlight(-1, -1);
  }

  function highlight(i, j) {
    var ctx = over.getContext("2d");
    ctx.setTransform(geo.dpr, 0, 0, geo.dpr, 0, 0);
    ctx.clearRect(0, 0, geo.size, geo.size);
    if (i < 0) return;
    var m = geo.margin, c = geo.cell;
    ctx.fillStyle = "rgba(40,60,100,0.10)";
    ctx.fillRect(m, m + i * c, n * c, c);
    ctx.fillRect(m + j * c, m, c, n * c);
    ctx.strokeStyle = "#111"; ctx.lineWidth = 1.5;
    ctx.strokeRect(m + j * c - 1, m + i * c - 1, c + 2, c + 2);
  }

  canvas.addEventListener("mousemove", function (e) {
    if (!geo) return;
    var r = canvas.getBoundingClientRect();
    var x = e.clientX - r.left, y = e.clientY - r.top;
    var j = Math.floor((x - geo.margin) / geo.cell), i = Math.floor((y - geo.margin) / geo.cell);
    if (i < 0 || j < 0 || i >= n || j >= n) { tip.hidden = true; highlight(-1, -1); return; }
    var v = conf[i][j], total = rowSum[i];
    var pct = !total ? "no " + names[i] + " pixels labeled"
      : (100 * v / total).toFixed(v && v / total < 0.001 ? 3 : 1) + "% of " + names[i] + " pixels";
    tip.textContent = names[i] + " \u2192 " + names[j] + ": " + v.toLocaleString("en-US") +
      " px, " + pct;
    tip.hidden = false;
    var left = x + 14, top = y + 14;
    if (left + tip.offsetWidth > wrap.clientWidth) left = x - tip.offsetWidth - 10;
    tip.style.left = left + "px"; tip.style.top = top + "px";
    highlight(i, j);
  });
  canvas.addEventListener("mouseleave", function () { tip.hidden = true; highlight(-1, -1); });
  var pending = null;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(draw, 120);
  });
  draw();
})();
"""
