"""A self-contained HTML page for one evaluation run.

``write_html_report(record, path, panels=...)`` writes one file that opens
from disk with no network and no external asset: styles, script, data and
images are inline. The page is the template ``static/report.html`` filled
with ``string.Template``; its styles (``static/report.css``) and script
(``static/report.js``) are inlined at write time. This module computes what
the page shows from ``record``, the results dict eval writes as JSON
(``SegmentationMetrics.summary`` plus the run's settings), and nothing else:

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

The panels themselves (``error_map``, ``panel_tiles``, ``WorstPanels``) are
drawn in ``evaluation.panels``; they are importable from here as well.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
import string
from importlib import resources
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import MitSemsegError
from .panels import TILE_LABELS, WorstPanels, error_map, panel_tiles, png_bytes

__all__ = ["write_html_report", "render_html_report", "top_confusions", "miou_histogram",
           "report_numbers", "ReportAssetError",
           # drawn in evaluation.panels, kept importable from here
           "error_map", "panel_tiles", "WorstPanels"]

_HIST_BINS = 20


class ReportAssetError(MitSemsegError):
    """A file of the report page (``evaluation/static/``) is missing from the installation."""


def _asset(name: str) -> str:
    """The text of ``static/<name>``, shipped as package data."""
    path = resources.files(__package__).joinpath("static", name)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportAssetError(f"report page asset {path} is missing: reinstall mit_semseg "
                               f"(pip install -e .)") from None


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
        labels = TILE_LABELS if len(pictures) == len(TILE_LABELS) else [""] * len(pictures)
        if caption is None:
            stats = per_image.get(str(name))
            caption = "" if stats is None else (f"mIoU {_pct(stats.get('mean_iou'), 1)}, "
                                                f"accuracy {_pct(stats.get('pixel_accuracy'), 1)}")
        tiles = []
        for pic, label in zip(pictures, labels):
            data, w, h = png_bytes(pic)
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
    page = string.Template(_asset("report.html"))
    return page.substitute(
        title=_esc(title), style=_asset("report.css"), script=_asset("report.js"),
        run=_run_html(record), summary=_summary_html(record, k), table=_table_html(record),
        histogram=_histogram_svg(derived["per_image_histogram"]), confusions=conf_html,
        heatmap=heat_html, panels=_panels_html(panels, record), num_classes=len(names),
        data=data_json)


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
