"""The results as text tables (``format_report``)."""
from __future__ import annotations

import math
from typing import Any, Sequence


def _fmt(x: float | None, spec: str = ".2f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def _spread(s: dict[str, float], spec: str = ".2f") -> str:
    return f"{_fmt(s['median'], spec)} [{_fmt(s['min'], spec)}-{_fmt(s['max'], spec)}]"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _speedup(e: dict[str, Any]) -> str:
    return _fmt(e.get("speedup"), ".2f") + ("x" if e.get("speedup") else "")


def _yes_no(x: bool | None) -> str:
    return "-" if x is None else "yes" if x else "no"


def _header(results: dict[str, Any]) -> list[str]:
    m = results.get("machine", {})
    out = [f"mit_semseg benchmark: {m.get('device')} ({m.get('device_name')}), "
           f"{m.get('threads')} threads, torch {m.get('torch')}, "
           f"OMP_WAIT_POLICY={m.get('omp_wait_policy')}, load average "
           f"{m.get('load_avg_start')} -> {m.get('load_avg_end')}"]
    if m.get("allocator"):
        out.append(f"memory: {m['allocator']} (the original runs with system defaults)"
                   if "original" in results else f"memory: {m['allocator']}")
    if "fused_conv_exact" in m or "banding_exact" in m:
        out.append("this machine: oneDNN fused conv bit-identical to separate ops "
                   f"(fused_conv_exact): {_yes_no(m.get('fused_conv_exact'))}; banded fusion "
                   f"bit-identical to one piece (banding_exact, {m.get('banding_classes')} "
                   f"classes): {_yes_no(m.get('banding_exact'))}")
    if "original" in results:
        o = results["original"]
        out.append(f"original: {o.get('mit_semseg_file')} (torch {o.get('torch')})")
    peak = results.get("matmul_peak_gflops")
    if peak:
        out.append("matmul peak (torch.mm {0}^3): ".format(peak["n"]) + ", ".join(
            f"{k} {v:.0f} GFLOP/s" for k, v in peak.items() if k != "n"))
    return out


def _labels_cell(name: str, e: dict[str, Any], ref: str | None) -> str:
    agree = e.get(f"agreement_vs_{ref}")
    if agree is None:
        return "ref" if name == ref else "-"
    text = _fmt(agree, ".4%")
    if e.get("agreement_vs_default_fp32") is not None:
        return text + f" (vs fp32 default {_fmt(e['agreement_vs_default_fp32'], '.3%')})"
    if e.get("differing_pixels"):
        text += (f" ({e['differing_pixels']} px, ref margin "
                 f"<= {_fmt(e['max_ref_gap_at_differing'], '.0e')})")
    return text


def _inference(results: dict[str, Any], section: str, title: str, mem_key: str) -> list[str]:
    rows = results.get(section)
    if not rows:
        return []
    r0 = rows[0]
    size = "x".join(str(s) for s in reversed(r0["size"]))
    extra = f", scales {r0['scales']}" if "scales" in r0 else ""
    table = []
    for r in rows:
        for i, (name, e) in enumerate(r["methods"].items()):
            gflops = e.get("gflops", r["gflops"])
            table.append([
                r["pair"] if i == 0 else "", name, _spread(e["img_per_s"]),
                _fmt(e["model_ms"]["median"], ".0f"), _fmt(e["post_ms"]["median"], ".0f"),
                _fmt(gflops, ".1f") if i == 0 or gflops != r["gflops"] else "",
                _fmt(e.get("achieved_gflops"), ".0f"), _fmt(e.get("share_of_peak"), ".0%"),
                _fmt(e.get(mem_key), ".0f"), _fmt(e.get("transient_mb"), ".0f"),
                _speedup(e), _labels_cell(name, e, r["reference"])])
    return [f"\n{title}, {size} image{extra}, batch 1: median [min-max] of the runs; "
            f"speedup and labels vs {r0['reference']}",
            _table(["pair", "method", "img/s", "model ms", "fusion ms", "GFLOP", "GFLOP/s",
                    "%peak", "peak MB", "+MB", "speedup", "labels = ref"], table)]


def _reduced_precision(results: dict[str, Any]) -> list[str]:
    """Label agreement of the opt-in reduced precisions, per model and case."""
    table = []
    for section, case in (("single_scale", "single-scale"), ("multi_scale", "multi-scale")):
        for r in results.get(section) or []:
            for name, e in r["methods"].items():
                if name.startswith("default-"):
                    table.append([r["pair"], case, name[len("default-"):],
                                  _fmt(e.get("agreement_vs_default_fp32"), ".3%"),
                                  f"{_fmt(e.get('agreement_vs_' + str(r['reference'])), '.3%')} "
                                  f"({r['reference']})", _speedup(e)])
    if not table:
        return []
    return ["\nReduced precision (opt-in: VAL/TEST.precision): share of pixels with the "
            "same label",
            _table(["pair", "case", "precision", "vs fp32 default", "vs reference",
                    "speedup"], table)]


def _training(results: dict[str, Any], mem_key: str) -> list[str]:
    rows = results.get("training")
    if not rows:
        return []
    r0 = rows[0]
    table = []
    for r in rows:
        ref = r["reference"]
        for i, (name, e) in enumerate(r["methods"].items()):
            diff = e.get(f"max_rel_loss_diff_vs_{ref}")
            first = e.get(f"first_rel_loss_diff_vs_{ref}")
            table.append([r["pair"] if i == 0 else "", name, _spread(e["it_per_s"]),
                          _fmt(e["img_per_s"]["median"]), _fmt(e["ms_per_it"]["median"], ".0f"),
                          _fmt(e.get(mem_key), ".0f"), _speedup(e),
                          "ref" if name == ref else f"{_fmt(first, '.1e')} / {_fmt(diff, '.1e')}",
                          _fmt(e["losses"][-1], ".4f")])
    return [f"\nTraining step, batch {r0['batch']}, {r0['size']}x{r0['size']}: "
            f"median [min-max] over iterations; speedup and losses vs {r0['reference']}",
            _table(["pair", "method", "it/s", "img/s", "ms/it", "peak MB", "speedup",
                    "loss rel diff: first / max", "last loss"], table)]


def _data(results: dict[str, Any]) -> list[str]:
    d = results.get("data")
    if not d:
        return []
    out = [f"\nData loader (TrainDataset, batch {d['batch']}, synthetic "
           f"~{d['image_side']} px images)",
           _table(["workers", "batches/s", "images/s", "ms/batch [min-max]"],
                  [[w, _fmt(v["batches_per_s"], ".1f"), _fmt(v["images_per_s"], ".1f"),
                    _spread(v["ms_per_batch"], ".1f") if "ms_per_batch" in v else "-"]
                   for w, v in d["loaders"].items()])]
    s = d.get("train_step_split")
    if s:
        out.append(f"training step fed in-process ({s['pair']}, default step): data "
                   f"{_fmt(s['data_ms']['median'], '.0f')} ms + compute "
                   f"{_fmt(s['compute_ms']['median'], '.0f')} ms per iteration "
                   f"(data {_fmt(s['data_share'], '.0%')})")
    return out


def _metrics(results: dict[str, Any]) -> list[str]:
    mt = results.get("metrics")
    if not mt:
        return []
    return [f"\nMetrics, {mt['size']}x{mt['size']} maps, {mt['num_class']} classes: "
            f"intersectionAndUnion {_fmt(mt['intersectionAndUnion_ms']['median'], '.1f')} ms; "
            f"confusion matrix {_fmt(mt['confusion_numpy_ms']['median'], '.1f')} ms numpy "
            f"({_fmt(mt['speedup_numpy'], '.1f')}x), "
            f"{_fmt(mt['confusion_torch_ms']['median'], '.1f')} ms torch "
            f"({_fmt(mt['speedup_torch'], '.1f')}x); same intersection/union: "
            f"{mt['equal_results']}"]


def _agree_cell(x: dict[str, Any] | None) -> str:
    if x is None:
        return "-"
    return f"{_fmt(x['all'], '.4%')} (min image {_fmt(x['min_image'], '.4%')})"


def _testpy(results: dict[str, Any]) -> list[str]:
    t = results.get("testpy")
    if not t:
        return []
    table = []
    for r in t["rows"]:
        ref = r["reference"]
        for i, (name, e) in enumerate(r["methods"].items()):
            cell = "ref" if name == ref else _agree_cell(e.get(f"agreement_vs_{ref}"))
            if ref != "exact" and "agreement_vs_exact" in e:
                cell += f"; vs exact {_agree_cell(e['agreement_vs_exact'])}"
            table.append([r["pair"] if i == 0 else "", str(r["imgSizes"]) if i == 0 else "",
                          name, _spread(e["seconds"]), _fmt(e["img_per_s"]), _speedup(e), cell])
    h, w = t["size"]
    images = f"{t['images']} image{'s' if t['images'] != 1 else ''}"
    out = [f"\ntest.py, whole process, {images} {w}x{h}: seconds per run, "
           "median [min-max]; labels from the output PNGs",
           _table(["pair", "imgSizes", "method", "seconds", "img/s", "speedup",
                   "labels = ref"], table)]
    out += [f"note: {n}" for n in t.get("notes", [])]
    return out


def format_report(results: dict[str, Any]) -> str:
    """The results as text tables."""
    device = results.get("machine", {}).get("device", "cpu")
    mem_key = "peak_rss_mb" if device.startswith("cpu") else "peak_alloc_mb"
    out = _header(results)
    out += _inference(results, "single_scale", "Single-scale inference", mem_key)
    out += _inference(results, "multi_scale", "Multi-scale inference", mem_key)
    out += _reduced_precision(results)
    out += _training(results, mem_key)
    out += _testpy(results)
    out += _data(results)
    out += _metrics(results)
    return "\n".join(out)
