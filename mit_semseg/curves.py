"""Draw a run's training curves from ``DIR/metrics.jsonl`` (see mit_semseg.monitor)::

    python -m mit_semseg.curves ckpt/my-run -o curves.png

Four panels over the global iteration: training loss (per iteration and
epoch means), accuracy (training, and validation pixel accuracy), learning
rates, validation mean IoU (best epoch marked). Needs matplotlib
(``pip install mit_semseg[plot]``).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from .monitor import read_metrics

__all__ = ["plot_curves", "main"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("error: the curves command needs matplotlib: pip install matplotlib "
                         "(or the package's [plot] extra)") from None
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


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m mit_semseg.curves",
        description="Draw loss, accuracy, learning rates and validation mean IoU of a training "
                    "run (DIR/metrics.jsonl) to a PNG.")
    parser.add_argument("run", metavar="DIR", help="the run folder (cfg.DIR) or its metrics.jsonl")
    parser.add_argument("-o", "--output", help="PNG to write (default: DIR/curves.png)")
    parser.add_argument("--title", default=None, help="figure title (default: the folder name)")
    args = parser.parse_args(argv)
    folder = args.run if os.path.isdir(args.run) else os.path.dirname(args.run)
    out = args.output or os.path.join(folder, "curves.png")
    try:
        records = read_metrics(args.run)
        title = args.title if args.title is not None else os.path.basename(os.path.abspath(folder))
        plot_curves(records, out, title)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"curves written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
