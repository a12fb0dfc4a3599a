"""Draw a run's training curves from ``DIR/metrics.jsonl`` (see mit_semseg.training.monitor)::

    python -m mit_semseg curves ckpt/my-run -o curves.png

Four panels over the global iteration: training loss (per iteration and
epoch means), accuracy (training, and validation pixel accuracy), learning
rates, validation mean IoU (best epoch marked). Needs matplotlib
(``pip install mit_semseg[plot]``).
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


def plot_curves(records: Sequence[dict], out_path: str, title: str = "") -> str:
    """Write the four-panel PNG for ``records`` (metrics-file records) to ``out_path``."""
    plt = _pyplot()
    iters = [r for r in records if r.get("type") == "iter"]
    epochs = [r for r in records if r.get("type") == "epoch"]
    val = [r for r in epochs if "val_mean_iou" in r]
    if not iters and not epochs:
        raise ValueError("no iteration or epoch records to draw")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    (ax_loss, ax_acc), (ax_lr, ax_val) = axes

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
        ax_val.plot(vx, vy, "s-", color="tab:green")
        best = max(val, key=lambda r: r["val_mean_iou"])
        ax_val.plot([best["global_iter"]], [best["val_mean_iou"]], "*", ms=16, color="tab:red",
                    label=f"best: epoch {best['epoch']} ({best['val_mean_iou']:.4f})")
        for r in val:
            ax_val.annotate(f"ep {r['epoch']}", (r["global_iter"], r["val_mean_iou"]),
                            textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        ax_val.legend()
    else:
        ax_val.text(0.5, 0.5, "no validation\n(set TRAIN.eval_every)", ha="center",
                    va="center", transform=ax_val.transAxes)
    ax_val.set_title("validation mean IoU")
    for ax in axes.flat:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    return out_path
