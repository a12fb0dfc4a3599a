"""``python -m mit_semseg pretrained NAME``: download a model MIT released for ADE20K
into ckpt/<name>/."""
from __future__ import annotations

import os
from typing import Sequence

from ..runtime.command import EXIT_USAGE, command_parser, parse_command, run_command


def main(argv: Sequence[str] | None = None) -> int:
    from ..checkpoints.released import RELEASED_MODELS, canonical_name, download, fetch_model
    parser = command_parser(
        "python -m mit_semseg pretrained",
        "Download a released ADE20K model into ckpt/<name>/.",
        "Exit status: 0 done, 1 error (one line on stderr: offline, unknown name), "
        "2 usage error.", overrides=False)
    parser.add_argument("names", nargs="*", help="released model name(s), see --list")
    parser.add_argument("--dest", default="ckpt", help="parent folder (default: ckpt)")
    parser.add_argument("--list", action="store_true", help="show the released models")
    parser.add_argument("--url", help="download this URL instead (with --out)")
    parser.add_argument("--out", help="destination file for --url")
    args = parse_command(parser, argv)
    if args.url and not args.out:
        parser.error("--url needs --out FILE")
    if args.list or not (args.names or args.url):
        for key, model in RELEASED_MODELS.items():
            print(f"{key:40s} {model.checkpoint:14s} --cfg {model.config}")
        return 0 if args.list else EXIT_USAGE

    def body() -> None:
        if args.url:
            print(download(args.url, args.out))
            return
        for name in args.names:
            key = canonical_name(name)
            enc, dec = fetch_model(key, args.dest)
            model = RELEASED_MODELS[key]
            print(f"{key}: {enc}, {dec}")
            print(f"  use with: --cfg {model.config} DIR {os.path.dirname(enc)} "
                  f"TEST.checkpoint {model.checkpoint} VAL.checkpoint {model.checkpoint}")
    return run_command(body)
