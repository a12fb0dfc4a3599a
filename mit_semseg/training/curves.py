"""Draw a run's training curves from ``DIR/metrics.jsonl`` (see mit_semseg.training.monitor)::

    python -m mit_semseg curves ckpt/my-run -o curves.png

Six panels over the global iteration: training loss (per iteration and epoch
means), accuracy (training, and validation pixel accuracy), learning rates,
validation mean IoU (and ``TRAIN.best_metric`` when it is another; best epoch
marked), per-class validation IoU over time (every class up to
``CLASS_LINES``, else the best and worst ``CLASS_LINES // 2`` at the last
validation, or the classes asked for), and the per-class IoU of the best
epoch, lowest first (at most ``CLASS_BARS`` bars: readable for 150 classes).
Needs matplotlib (``pip install mit_semseg[plot]``).
"""
from __future__ import annotations

import os
from typing import Sequence

from ..errors import MitSemsegError
from .monitor import read_metrics

__all__ = ["plot_curves"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MitSemsegError("the curves command needs matplotlib: pip install matplotlib "
                             "(or the package's [plot] extra: pip install -e \".[plot]\")") \
            from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


CLASS_LINES = 10  # per-class IoU lines drawn at most
CLASS_BARS = 20  # lowest per-class IoUs of the best epoch drawn as bars


def _best_record(val: Sequence[dict]) -> dict:
    """The best validated epoch record: as the run chose it (``best_epoch``), or by
    mean IoU for metrics files of earlier versions."""
    chosen = val[-1].get("best_epoch")
    for r in val:
        if r["epoch"] == chosen:
            return r
    return max(val, key=lambda r: r["val_mean_iou"])


def _class_lines(val: Sequence[dict], classes: Sequence[str] | None) -> tuple[list[str], str]:
    """The classes whose IoU curves are drawn, and the panel's title."""
    last = val[-1].get("val_class_iou") or {}
    if classes:
        missing = [c for c in classes if c not in last]
        if missing:
            raise MitSemsegError(f"--classes: no class {missing[0]!r} in the metrics file; "
                                 f"classes: {', '.join(list(last)[:40])}"
                                 f"{' ...' if len(last) > 40 else ''}")
        return list(classes), "validation IoU per class"
    if len(last) <= CLASS_LINES:
        return list(last), "validation IoU per class"
    ranked = sorted(last, key=lambda k: last[k], reverse=True)
    half = CLASS_LINES // 2
    return ranked[:half] + ranked[-half:], \
        f"validation IoU: best {half} and worst {half} of {len(last)} classes (last epoch)"


def plot_curves(records: Sequence[dict], out_path: str, title: str = "",
                classes: Sequence[str] | None = None) -> str:
    """Write the curves PNG for ``records`` (metrics-file records) to ``out_path``.
    ``classes``: class names whose IoU curves to draw (default: see the module)."""
    plt = _pyplot()
    iters = [r for r in records if r.get("type") == "iter"]
    epochs = [r for r in records if r.get("type") == "epoch"]
    val = [r for r in epochs if "val_mean_iou" in r]
    if not iters and not epochs:
        raise ValueError("no iteration or epoch records to draw")
    per_class = [r for r in val if r.get("val_class_iou")]
    rows = 3 if per_class else 2
    fig, axes = plt.subplots(rows, 2, figsize=(12, 3.8 * rows))
    (ax_loss, ax_acc), (ax_lr, ax_val) = axes[0], axes[1]

    x = [r["global_iter"] for r in iters]
    ax_loss.plot(x, [r["loss"] for r in iters], lw=0.8, alpha=0.5, label="iteration")
    ex = [r["global_iter"] for r in epochs if "loss" in r]
    ax_loss.plot(ex, [r["loss"] for r in epochs if "loss" in r], "o-", label="epoch mean")
    ax_loss.set_title("training loss")
    ax_loss.legend()

    ax_acc.plot(x, [r["acc"] * 100 for r in iters], lw=0.8, alpha=0.5, label="train (iteration)")
    ax_acc.plot(ex, [r["acc"] * 100 for r in epochs if "acc" in r], "o-", label="train (epoch)")
    if val:
        ax_acc.plot([r["global_iter"] for r in val], [r["val_pixel_accuracy"] * 100 for r in val],
                    "s-", label="validation")
    ax_acc.set_title("pixel accuracy (%)")
    ax_acc.legend()

    ax_lr.plot(x, [r["lr_encoder"] for r in iters], label="encoder")
    ax_lr.plot(x, [r["lr_decoder"] for r in iters], "--", label="decoder")
    ax_lr.set_title("learning rate")
    ax_lr.legend()

    if val:
        vx, vy = [r["global_iter"] for r in val], [r["val_mean_iou"] for r in val]
        ax_val.plot(vx, vy, "s-", color="tab:green", label="mean IoU")
        metric = val[-1].get("best_metric", "mean_iou")
        scores = [r.get("val_score") for r in val]
        if metric != "mean_iou" and all(v is not None for v in scores):
            ax_val.plot(vx, scores, "d--", color="tab:purple", label=metric)
        best = _best_record(val)
        score = best.get("val_score", best["val_mean_iou"])
        best_y = score if metric != "mean_iou" and score is not None else best["val_mean_iou"]
        ax_val.plot([best["global_iter"]], [best_y], "*", ms=16, color="tab:red",
                    label=f"best by {metric}: epoch {best['epoch']} ({best_y:.4f})")
        for r in val:
            ax_val.annotate(f"ep {r['epoch']}", (r["global_iter"], r["val_mean_iou"]),
                            textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        if any(r.get("stopped_early") for r in val):
            ax_val.axvline(val[-1]["global_iter"], color="tab:gray", ls=":",
                           label="stopped early")
        ax_val.legend(fontsize=8)
    else:
        ax_val.text(0.5, 0.5, "no validation\n(set TRAIN.eval_every)", ha="center",
                    va="center", transform=ax_val.transAxes)
    ax_val.set_title("validation")
    for ax in axes[:2].flat:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if per_class:
        _plot_classes(axes[2][0], axes[2][1], per_class, _best_record(val), classes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    return out_path


def _plot_classes(ax_lines, ax_bars, val: Sequence[dict], best: dict,
                  classes: Sequence[str] | None) -> None:
    """Per-class IoU over time (a few classes) and at the best epoch (lowest first)."""
    names, title = _class_lines(val, classes)
    x = [r["global_iter"] for r in val]
    for name in names:
        ax_lines.plot(x, [r["val_class_iou"].get(name, float("nan")) for r in val], "o-",
                      ms=3, lw=1, label=name)
    ax_lines.set_title(title, fontsize=10)
    ax_lines.set_xlabel("iteration")
    ax_lines.set_ylim(-0.02, 1.02)
    ax_lines.grid(alpha=0.3)
    ax_lines.legend(fontsize=7, ncol=2, loc="best")

    ious = best.get("val_class_iou") or val[-1]["val_class_iou"]
    lowest = sorted(ious.items(), key=lambda kv: kv[1])[:CLASS_BARS]
    ax_bars.barh(range(len(lowest)), [v for _, v in lowest], color="tab:orange")
    for y, (_, v) in enumerate(lowest):
        ax_bars.text(v + 0.01, y, f"{v:.2f}", va="center", fontsize=6)
    ax_bars.set_yticks(range(len(lowest)))
    ax_bars.set_yticklabels([k for k, _ in lowest], fontsize=7)
    ax_bars.invert_yaxis()
    ax_bars.set_xlim(0, 1)
    zero = sum(1 for v in ious.values() if v == 0)
    title = f"IoU per class at the best epoch ({best['epoch']})"
    if len(ious) > len(lowest):
        title += f": lowest {len(lowest)} of {len(ious)}"
    if zero:
        title += f"; {zero} at 0"
    ax_bars.set_title(title, fontsize=10)
    ax_bars.grid(alpha=0.3, axis="x")
