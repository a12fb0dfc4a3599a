"""``python -m mit_semseg models ACTION``: weight files and model folders.

* ``convert SRC DST``: rewrite weights between ``.pth`` and ``.safetensors``.
* ``save --out FOLDER``: write a model folder (safetensors weights, config, class
  table, preprocessing, evaluation, model card) from a trained run or from a
  released model's ``.pth`` files.
* ``fetch MODEL``: a model folder or Hub repo id, checked; prints its folder.
* ``push FOLDER REPO_ID``: upload a model folder to the Hugging Face Hub.
* ``import-segformer SRC --out DIR``: SegFormer weights in transformers' form
  (``nvidia/segformer-*``, ``nvidia/mit-b*``) as encoder/decoder files of this package.
"""
from __future__ import annotations

import argparse
import os
from typing import Callable, Sequence

from ..runtime.command import (CommandParser, command_parser, parse_subcommand, run_command,
                               subcommand_parser)

_SUMMARIES = {
    "convert": "rewrite weights between .pth and .safetensors (formats told by the names)",
    "save": "write a model folder from a trained run or a released model",
    "fetch": "get a model folder or Hub repo id (into the Hub cache) and check it",
    "push": "upload a model folder to the Hugging Face Hub (needs the [hub] extra)",
    "import-segformer": "SegFormer weights of transformers (nvidia/segformer-*, nvidia/mit-b*) "
                        "as this package's encoder/decoder files",
}

_IMPORT_EPILOG = """\
examples:
  # ADE20K-finetuned (nvidia/segformer-b0-finetuned-ade-512-512/model.safetensors)
  python -m mit_semseg models import-segformer model.safetensors --out ckpt/ade20k-segformer_b0 \\
      --cfg config/ade20k-segformer_b0.yaml
  python eval.py --cfg config/ade20k-segformer_b0.yaml VAL.checkpoint hf.pth
  # ImageNet MiT encoder (nvidia/mit-b0): an encoder file for MODEL.weights_encoder
  python -m mit_semseg models import-segformer mit-b0.safetensors --out pretrained/mit_b0

Writes DIR/encoder_<tag> and, when the file has a decode head, DIR/decoder_<tag>
(--tag, default hf.pth; a .safetensors tag writes safetensors). Every key of the
file is mapped or named: the ImageNet classifier of nvidia/mit-b* is reported as
not used, anything unknown is an error. With --cfg the weights are first loaded
strictly into the model the config describes."""

_CONVERT_EPILOG = """\
examples:
  python -m mit_semseg models convert run/encoder_epoch_20.pth run/encoder_epoch_20.safetensors
  python -m mit_semseg models convert encoder.safetensors encoder_epoch_20.pth

Every key, its order, dtype, shape and bits are kept. The source is checked
against its folder's SHA256SUMS when listed there."""

_SAVE_EPILOG = """\
examples:
  # a trained run: DIR/{encoder,decoder}_<TEST.checkpoint> of the config
  python -m mit_semseg models save --out out/my-model --cfg config/my.yaml \\
      TEST.checkpoint epoch_20.pth --eval ckpt/my/eval_epoch_20.json
  # a released model from its .pth files (default: ckpt/<name>/)
  python -m mit_semseg models save --released ade20k-resnet50dilated-ppm_deepsup \\
      --out models/ade20k-resnet50dilated-ppm_deepsup

The weights are loaded strictly into the model the config describes before
anything is written. Run the folder with test.py --cfg FOLDER/config.yaml DIR
FOLDER, or Segmenter.from_pretrained(FOLDER)."""

_FETCH_EPILOG = """\
examples:
  python -m mit_semseg models fetch owner/my-model          # into the Hub cache
  HF_HUB_OFFLINE=1 python -m mit_semseg models fetch owner/my-model   # cache only
  python -m mit_semseg models fetch out/my-model            # a folder: checked only

Prints the folder, for test.py --cfg FOLDER/config.yaml DIR FOLDER."""

_PUSH_EPILOG = """\
example:
  python -m mit_semseg models push out/my-model owner/my-model --private

Log in first (hf auth login) or pass --token. The folder is checked against its
SHA256SUMS before the upload."""


def build_parser() -> CommandParser:
    """The command's parser, one subcommand per action."""
    parser = command_parser("python -m mit_semseg models", "Weight files and model folders.",
                            "ACTION --help shows the options of an action. See docs/models.md.",
                            overrides=False)
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION",
                                title="actions")

    def action(name: str, epilog: str, **flags) -> CommandParser:
        summary = _SUMMARIES[name]
        return subcommand_parser(parser, sub, name, summary, summary[0].upper() + summary[1:] + ".",
                                 epilog, **flags)

    convert = action("convert", _CONVERT_EPILOG, overrides=False)
    convert.add_argument("src", help="weights file to read (.pth or .safetensors)")
    convert.add_argument("dst", help="file to write; its suffix (.safetensors, .pth, .pt, .bin) "
                                     "names the format")

    save = action("save", _SAVE_EPILOG, config="optional")
    save.add_argument("--out", required=True, metavar="FOLDER",
                      help="model folder to write (new, empty or a model folder)")
    save.add_argument("--released", metavar="NAME",
                      help="a released model: its preset config, weights from "
                           "--checkpoint-dir (default ckpt/NAME)")
    save.add_argument("--checkpoint-dir", metavar="DIR",
                      help="folder with encoder_<checkpoint> and decoder_<checkpoint> "
                           "(default: the config's DIR)")
    save.add_argument("--checkpoint", help="checkpoint suffix (default: TEST.checkpoint)")
    save.add_argument("--encoder-weights", metavar="FILE")
    save.add_argument("--decoder-weights", metavar="FILE")
    save.add_argument("--eval", metavar="JSON", help="eval.py's results for the metrics table "
                                                     "(DIR/eval_<checkpoint>.json)")
    save.add_argument("--name", help="title of the model card (default: the folder's name)")

    fetch = action("fetch", _FETCH_EPILOG, overrides=False)
    fetch.add_argument("model", help="model folder or Hugging Face Hub repo id (owner/name)")
    fetch.add_argument("--revision", help="Hub branch, tag or commit (default: main)")
    fetch.add_argument("--cache-dir", metavar="DIR", help="Hub cache folder (default: the "
                                                          "Hub's, HF_HUB_CACHE)")

    imp = action("import-segformer", _IMPORT_EPILOG, config="optional", overrides=False)
    imp.add_argument("src", help="transformers checkpoint: model.safetensors or pytorch_model.bin")
    imp.add_argument("--out", required=True, metavar="DIR", help="folder to write the files to")
    imp.add_argument("--tag", default="hf.pth",
                     help="file suffix: DIR/encoder_TAG, DIR/decoder_TAG (default hf.pth)")

    push = action("push", _PUSH_EPILOG, overrides=False)
    push.add_argument("folder", help="model folder (written by models save)")
    push.add_argument("repo_id", help="Hub repo id owner/name (created if needed)")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--token", help="Hub token (default: the logged-in one)")
    push.add_argument("--message", help="commit message")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    name, parser, args = parse_subcommand(build_parser(), argv)
    return ACTIONS[name](parser, args)


def _convert(parser: CommandParser, args: argparse.Namespace) -> int:
    def body() -> None:
        from ..checkpoints.formats import convert, read_weights
        from ..errors import InputNotFoundError
        if not os.path.isfile(args.src):
            raise InputNotFoundError(f"weights file not found: {args.src}")
        convert(args.src, args.dst)
        print(f"wrote {args.dst} ({len(read_weights(args.dst, verify=False))} tensors)")
    return run_command(body)


def _save(parser: CommandParser, args: argparse.Namespace) -> int:
    if (args.encoder_weights is None) != (args.decoder_weights is None):
        parser.error("give both --encoder-weights and --decoder-weights, or neither")
    if bool(args.cfg) == bool(args.released):
        parser.error("give --cfg CONFIG (a trained run) or --released NAME, one of them")

    def body() -> None:
        from ..checkpoints.released import RELEASED_MODELS, canonical_name, preset_config
        from ..models.folder import save_pretrained
        config, checkpoint_dir, checkpoint = args.cfg, args.checkpoint_dir, args.checkpoint
        if args.released:
            key = canonical_name(args.released)
            config = preset_config(key)
            checkpoint_dir = checkpoint_dir or os.path.join("ckpt", key)
            checkpoint = checkpoint or RELEASED_MODELS[key].checkpoint
        folder = save_pretrained(args.out, config, encoder_weights=args.encoder_weights,
                                 decoder_weights=args.decoder_weights,
                                 checkpoint_dir=checkpoint_dir, checkpoint=checkpoint,
                                 opts=args.opts, evaluation=args.eval,
                                 name=args.name or args.released)
        print(f"wrote model folder {folder}")
        print(f"  use with: python test.py --cfg {os.path.join(folder, 'config.yaml')} "
              f"DIR {folder} --imgs PHOTO, or Segmenter.from_pretrained({folder!r})")
    return run_command(body)


def _fetch(parser: CommandParser, args: argparse.Namespace) -> int:
    def body() -> None:
        from ..checkpoints.hub import check_model_folder, resolve_model
        folder = resolve_model(args.model, revision=args.revision, cache_dir=args.cache_dir)
        check_model_folder(folder)
        print(folder)
    return run_command(body)


def _push(parser: CommandParser, args: argparse.Namespace) -> int:
    def body() -> None:
        from ..checkpoints.hub import push_to_hub
        url = push_to_hub(args.folder, args.repo_id, private=args.private or None,
                          token=args.token, commit_message=args.message)
        print(f"uploaded {args.folder} to {args.repo_id}: {url}")
    return run_command(body)


def _import_segformer(parser: CommandParser, args: argparse.Namespace) -> int:
    def body() -> None:
        from ..checkpoints.formats import write_weights
        from ..errors import InputNotFoundError
        from ..models.segformer import convert_hf_segformer, read_hf_state
        if not os.path.isfile(args.src):
            raise InputNotFoundError(f"weights file not found: {args.src}")
        weights = convert_hf_segformer(read_hf_state(args.src), args.src)
        if args.cfg:
            from ..config import load_cfg
            from ..models import build_model
            # a check only: pretrained False, these weights replace ImageNet's anyway
            build_model(load_cfg(args.cfg, ["MODEL.pretrained", "False"]),
                        (weights.encoder, weights.decoder))
        os.makedirs(args.out, exist_ok=True)
        parts = [("encoder", weights.encoder)] + \
            ([("decoder", weights.decoder)] if weights.decoder is not None else [])
        for kind, state in parts:
            path = write_weights(state, os.path.join(args.out, f"{kind}_{args.tag}"))
            print(f"wrote {path} ({len(state)} tensors)")
        if weights.not_used:
            print(f"not used (no module here has them): {', '.join(weights.not_used)}")
        if weights.decoder is None:
            print(f"an encoder only: train from it with MODEL.weights_encoder "
                  f"{os.path.join(args.out, 'encoder_' + args.tag)}")
        else:
            print(f"use with: python eval.py --cfg CONFIG DIR {args.out} VAL.checkpoint {args.tag}")
    return run_command(body)


# action -> handler (its parser and arguments; returns the exit status)
ACTIONS: dict[str, Callable[[CommandParser, argparse.Namespace], int]] = {
    "convert": _convert, "save": _save, "fetch": _fetch, "push": _push,
    "import-segformer": _import_segformer}
