"""``python -m mit_semseg pretrained NAME``: download a model MIT released for ADE20K
into ckpt/<name>/ (resuming, from the MIT host or mirrors, SHA-256 checked), or
check a folder's files against its SHA256SUMS (``--verify``).

Download a released ADE20K model into ckpt/<name>/, or check a folder against
its SHA256SUMS.
"""
from __future__ import annotations

import os
from typing import Sequence

from ..runtime.command import (EXIT_USAGE, CommandParser, command_parser, parse_command,
                               run_command)

EPILOG = """\
examples:
  python -m mit_semseg pretrained ade20k-resnet50dilated-ppm_deepsup
  python -m mit_semseg pretrained ade20k-resnet50dilated-ppm_deepsup \\
      --mirror http://models.lab.internal/semseg --mirror /mnt/share/semseg-models.zip
  python -m mit_semseg pretrained --verify ckpt/ade20k-resnet50dilated-ppm_deepsup

Sources, in the order tried: the MIT host, each --mirror, then MIT_SEMSEG_MIRRORS
(several separated by ',' or the path separator). A source is a URL prefix, a
folder or a .zip/.tar archive holding <name>/<file>. A cut download resumes where
it stopped. The SHA-256 of each file is recorded in <dest>/<name>/SHA256SUMS at
its first download and checked on every later load (docs/models.md).

Exit status: 0 done, 1 error (one line on stderr, or the list of sources tried
when every one failed), 2 usage error."""

_DESCRIPTION = __doc__.split("\n\n", 1)[1]


def build_parser() -> CommandParser:
    """The command's parser."""
    parser = command_parser("python -m mit_semseg pretrained", _DESCRIPTION, EPILOG, overrides=False)
    parser.add_argument("names", nargs="*", help="released model name(s), see --list")
    parser.add_argument("--dest", default="ckpt", help="parent folder (default: ckpt)")
    parser.add_argument("--list", action="store_true", help="show the released models")
    parser.add_argument("--mirror", action="append", default=[], metavar="SOURCE",
                        help="also try this URL prefix, folder or archive (after the MIT "
                             "host, before MIT_SEMSEG_MIRRORS); repeatable")
    parser.add_argument("--verify", action="append", default=[], metavar="FOLDER",
                        help="check the files listed in FOLDER/SHA256SUMS (a downloaded or "
                             "saved model); repeatable")
    parser.add_argument("--cfg", metavar="FILE",
                        help="a config whose MODEL.mirrors are tried last (after --mirror and "
                             "MIT_SEMSEG_MIRRORS)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--url", help="download this URL instead (with --out)")
    parser.add_argument("--out", help="destination file for --url")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    from ..checkpoints.released import RELEASED_MODELS, canonical_name, download, fetch_model
    parser = build_parser()
    args = parse_command(parser, argv)
    if args.url and not args.out:
        parser.error("--url needs --out FILE")
    if args.list or not (args.names or args.url or args.verify):
        for key, model in RELEASED_MODELS.items():
            print(f"{key:40s} {model.checkpoint:14s} --cfg {model.config}")
        return 0 if args.list else EXIT_USAGE

    def body() -> None:
        config_mirrors: list[str] = []
        if args.cfg:
            from ..config import load_cfg
            config_mirrors = list(load_cfg(args.cfg).MODEL.mirrors)
        for folder in args.verify:
            _verify(folder)
        if args.url:
            print(download(args.url, args.out, quiet=args.quiet))
        for name in args.names:
            key = canonical_name(name)
            enc, dec = fetch_model(key, args.dest, mirrors=args.mirror,
                                   config_mirrors=config_mirrors, progress=not args.quiet)
            model = RELEASED_MODELS[key]
            print(f"{key}: {enc}, {dec}")
            print(f"  use with: --cfg {model.config} DIR {os.path.dirname(enc)} "
                  f"TEST.checkpoint {model.checkpoint} VAL.checkpoint {model.checkpoint}")
    return run_command(body)


def _verify(folder: str) -> None:
    from ..checkpoints.ledger import SUMS_NAME, read_sums, verify_folder
    from ..errors import InputNotFoundError
    if not os.path.isdir(folder):
        raise InputNotFoundError(f"--verify {folder}: no such folder")
    listed = read_sums(folder)
    if not listed:
        raise InputNotFoundError(
            f"--verify {folder}: no {SUMS_NAME} there, so nothing to check against (it is "
            f"written when a model is downloaded or saved with save_pretrained)")
    checked = verify_folder(folder)
    absent = sorted(set(listed) - set(checked))
    note = f"; listed but absent: {', '.join(absent)}" if absent else ""
    print(f"{folder}: {len(checked)} file(s) match {SUMS_NAME}{note}")
