"""python -m mit_semseg.web --cfg CFG [--cfg CFG2 ...]: serve the web demo."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import WebExtraMissing, require_web

EPILOG = """examples:
  python -m mit_semseg.web --cfg config/synthetic-demo.yaml          # after bash demo.sh
  python -m mit_semseg.web --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml \\
      --cfg config/ade20k-mobilenetv2dilated-c1_deepsup.yaml
  python -m mit_semseg.web --cfg my.yaml --checkpoint-dir runs/my TEST.checkpoint epoch_10.pth

Then open http://127.0.0.1:8000/ (API documentation: http://127.0.0.1:8000/docs)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mit_semseg.web", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Web demo: upload a photo in the browser and see it parsed by one or "
                    "more models (a page and a JSON API). Weights: <DIR>/{encoder,decoder}_"
                    "<TEST.checkpoint>, as test.py.")
    p.add_argument("--cfg", action="append", required=True, metavar="CFG",
                   help="model config (YAML); repeat for a choice of models (the first is "
                        "the default); the model is named after the file")
    p.add_argument("--checkpoint-dir", action="append", default=[], metavar="DIR",
                   help="weights folder instead of the config's DIR; give none, or one per --cfg")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 "
                        "exposes the demo to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--device", default="auto", help="'auto' (default: GPU if any), 'cpu', 'cuda:N'")
    p.add_argument("--max-upload-mb", type=float, default=20.0,
                   help="larger uploads are refused with 413 (default 20)")
    p.add_argument("--queue", type=int, default=4,
                   help="requests that may wait per model while one runs; more get 503 "
                        "'busy, retry' (default 4)")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides for every model, e.g. TEST.checkpoint epoch_10.pth")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.checkpoint_dir and len(args.checkpoint_dir) != len(args.cfg):
        print(f"error: give --checkpoint-dir once per --cfg ({len(args.cfg)}), or not at all; "
              f"got {len(args.checkpoint_dir)}", file=sys.stderr)
        return 2
    if args.max_upload_mb <= 0 or args.queue < 0:
        print("error: --max-upload-mb must be > 0 and --queue >= 0", file=sys.stderr)
        return 2
    try:
        require_web()
    except WebExtraMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    import uvicorn

    from ..config import ConfigError
    from ..inference import CheckpointNotFoundError, DeviceUnavailableError
    from .app import create_app
    from .models import WebModel

    dirs = args.checkpoint_dir or [None] * len(args.cfg)
    models = []
    try:
        for cfg, folder in zip(args.cfg, dirs):
            models.append(WebModel.from_config(cfg, checkpoint_dir=folder, opts=args.opts,
                                               device=args.device))
            print(f"loaded model {models[-1].name!r} ({cfg}, weights in {models[-1].source})",
                  file=sys.stderr)
        app = create_app(models, max_upload_mb=args.max_upload_mb, queue=args.queue)
    except (CheckpointNotFoundError, ConfigError, DeviceUnavailableError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"serving on http://{args.host}:{args.port}/  (API docs: /docs; Ctrl-C stops)",
          file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
