"""``python -m mit_semseg web``: serve the web demo (a page and a JSON API).

Web demo: upload a photo in the browser and see it parsed by one or more models
(a page and a JSON API). Weights: <DIR>/{encoder,decoder}_<TEST.checkpoint>, as
test.py.
"""
from __future__ import annotations

import socket
import sys
from typing import Sequence

from ..runtime.command import (EXIT_USAGE, CommandParser, command_parser, parse_command,
                               run_command)
from ..runtime.process import release_memory

EPILOG = """examples:
  python -m mit_semseg web --cfg config/synthetic-demo.yaml          # after bash demo.sh
  python -m mit_semseg web --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml \\
      --cfg config/ade20k-mobilenetv2dilated-c1_deepsup.yaml
  python -m mit_semseg web --cfg my.yaml --checkpoint-dir runs/my TEST.checkpoint epoch_10.pth

Then open http://127.0.0.1:8000/ (API documentation: http://127.0.0.1:8000/docs).
The "serving on" line is printed once the server accepts connections.
Exit status: 0 stopped, 1 error (one line on stderr: weights, config, port in use),
2 usage error, 130 interrupted."""

_DESCRIPTION = __doc__.split("\n\n", 1)[1]


def build_parser() -> CommandParser:
    """The command's parser (flags and overrides)."""
    p = command_parser("python -m mit_semseg web", _DESCRIPTION,
        EPILOG, config="append", devices="one", device_aliases=("--device",),
        config_help=("model config (YAML); repeat for a choice of models (the first is the "
                     "default); the model is named after the file"))
    p.add_argument("--checkpoint-dir", action="append", default=[], metavar="DIR",
                   help="weights folder instead of the config's DIR; give none, or one per --cfg")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 "
                        "exposes the demo to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-upload-mb", type=float, default=20.0,
                   help="larger uploads are refused with 413 (default 20)")
    p.add_argument("--queue", type=int, default=4,
                   help="requests that may wait per model while one runs; more get 503 "
                        "'busy, retry' (default 4)")
    return p


def _listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket, or a one-line error naming the address."""
    from ..errors import MitSemsegError
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise MitSemsegError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (choose "
                             f"another --port, or stop the program using it)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_command(parser, argv)
    if args.checkpoint_dir and len(args.checkpoint_dir) != len(args.cfg):
        parser.print_usage(sys.stderr)
        print(f"error: give --checkpoint-dir once per --cfg ({len(args.cfg)}), or not at all; "
              f"got {len(args.checkpoint_dir)}", file=sys.stderr)
        return EXIT_USAGE
    if args.max_upload_mb <= 0 or args.queue < 0:
        print("error: --max-upload-mb must be > 0 and --queue >= 0", file=sys.stderr)
        return EXIT_USAGE

    def body() -> None:
        from ..web import require_web
        require_web()
        import uvicorn

        from ..web.app import create_app
        from ..web.models import WebModel
        sock = _listen(args.host, args.port)  # before loading: a port in use fails fast
        with sock:  # closed however loading or serving ends
            dirs = args.checkpoint_dir or [None] * len(args.cfg)
            models = []
            for cfg, folder in zip(args.cfg, dirs):
                models.append(WebModel.from_config(cfg, checkpoint_dir=folder, opts=args.opts,
                                                   device=args.gpus))
                print(f"loaded model {models[-1].name!r} ({cfg}, weights in "
                      f"{models[-1].source})", file=sys.stderr)
            app = create_app(models, max_upload_mb=args.max_upload_mb, queue=args.queue)
            release_memory()  # what loading freed (checkpoints, the models' first copies)
            url = f"http://{args.host}:{args.port}/"

            class _Server(uvicorn.Server):
                async def startup(self, sockets=None) -> None:
                    await super().startup(sockets=sockets)
                    if self.started:
                        print(f"serving on {url}  (API docs: {url}docs; Ctrl-C stops)",
                              file=sys.stderr, flush=True)

            server = _Server(uvicorn.Config(app, log_level="info"))
            server.run(sockets=[sock])
    return run_command(body)
