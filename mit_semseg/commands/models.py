"""``python -m mit_semseg models ACTION``: weight files and model folders.

* ``convert SRC DST``: rewrite weights between ``.pth`` and ``.safetensors``.
* ``save --out FOLDER``: write a model folder (safetensors weights, config, class
  table, preprocessing, evaluation, model card) from a trained run or from a
  released model's ``.pth`` files.
* ``fetch MODEL``: a model folder or Hub repo id, checked; prints its folder.
* ``push FOLDER REPO_ID``: upload a model folder to the Hugging Face Hub.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from ..runtime.command import EXIT_USAGE, command_parser, parse_command, run_command

_ACTIONS = {
    "convert": "rewrite weights between .pth and .safetensors (formats told by the names)",
    "save": "write a model folder from a trained run or a released model",
    "fetch": "get a model folder or Hub repo id (into the Hub cache) and check it",
    "push": "upload a model folder to the Hugging Face Hub (needs the [hub] extra)",
}
_USAGE = ("usage: python -m mit_semseg models ACTION [ARGS]  (ACTION --help for its options)"
          "\n\nactions:\n" + "".join(f"  {k:8s} {v}\n" for k, v in _ACTIONS.items()) +
          "\nSee docs/models.md.\n")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE, end="")
        return 0 if argv else EXIT_USAGE
    if argv[0] not in _ACTIONS:
        print(_USAGE, end="", file=sys.stderr)
        print(f"error: unknown action '{argv[0]}'; expected one of {list(_ACTIONS)}",
              file=sys.stderr)
        return EXIT_USAGE
    action: Callable[[list[str]], int] = globals()[f"_{argv[0]}"]
    return action(argv[1:])


def _parser(action: str, epilog: str, **kwargs):
    return command_parser(f"python -m mit_semseg models {action}",
                          _ACTIONS[action][0].upper() + _ACTIONS[action][1:] + ".", epilog,
                          **kwargs)


def _convert(argv: list[str]) -> int:
    parser = _parser("convert", """\
examples:
  python -m mit_semseg models convert run/encoder_epoch_20.pth run/encoder_epoch_20.safetensors
  python -m mit_semseg models convert encoder.safetensors encoder_epoch_20.pth

Every key, its order, dtype, shape and bits are kept. The source is checked
against its folder's SHA256SUMS when listed there.""", overrides=False)
    parser.add_argument("src", help="weights file to read (.pth or .safetensors)")
    parser.add_argument("dst", help="file to write; its suffix (.safetensors, .pth, .pt, .bin) "
                                    "names the format")
    args = parse_command(parser, argv)

    def body() -> None:
        from ..checkpoints.formats import convert, read_weights
        from ..errors import InputNotFoundError
        if not os.path.isfile(args.src):
            raise InputNotFoundError(f"weights file not found: {args.src}")
        convert(args.src, args.dst)
        print(f"wrote {args.dst} ({len(read_weights(args.dst, verify=False))} tensors)")
    return run_command(body)


def _save(argv: list[str]) -> int:
    parser = _parser("save", """\
examples:
  # a trained run: DIR/{encoder,decoder}_<TEST.checkpoint> of the config
  python -m mit_semseg models save --out out/my-model --cfg config/my.yaml \\
      TEST.checkpoint epoch_20.pth --eval ckpt/my/eval_epoch_20.json
  # a released model from its .pth files (default: ckpt/<name>/)
  python -m mit_semseg models save --released ade20k-resnet50dilated-ppm_deepsup \\
      --out models/ade20k-resnet50dilated-ppm_deepsup

The weights are loaded strictly into the model the config describes before
anything is written. Run the folder with test.py --cfg FOLDER/config.yaml DIR
FOLDER, or Segmenter.from_pretrained(FOLDER).""", config="optional")
    parser.add_argument("--out", required=True, metavar="FOLDER",
                        help="model folder to write (new, empty or a model folder)")
    parser.add_argument("--released", metavar="NAME",
                        help="a released model: its preset config, weights from "
                             "--checkpoint-dir (default ckpt/NAME)")
    parser.add_argument("--checkpoint-dir", metavar="DIR",
                        help="folder with encoder_<checkpoint> and decoder_<checkpoint> "
                             "(default: the config's DIR)")
    parser.add_argument("--checkpoint", help="checkpoint suffix (default: TEST.checkpoint)")
    parser.add_argument("--encoder-weights", metavar="FILE")
    parser.add_argument("--decoder-weights", metavar="FILE")
    parser.add_argument("--eval", metavar="JSON", help="eval.py's results for the metrics table "
                                                       "(DIR/eval_<checkpoint>.json)")
    parser.add_argument("--name", help="title of the model card (default: the folder's name)")
    args = parse_command(parser, argv)
    if (args.encoder_weights is None) != (args.decoder_weights is None):
        parser.error("give both --encoder-weights and --decoder-weights, or neither")
    if bool(args.cfg) == bool(args.released):
        parser.error("give --cfg CONFIG (a trained run) or --released NAME, one of them")

    def body() -> None:
        from ..checkpoints.released import RELEASED_MODELS, canonical_name, preset_config
        from ..inference.model_folder import save_pretrained
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


def _fetch(argv: list[str]) -> int:
    parser = _parser("fetch", """\
examples:
  python -m mit_semseg models fetch owner/my-model          # into the Hub cache
  HF_HUB_OFFLINE=1 python -m mit_semseg models fetch owner/my-model   # cache only
  python -m mit_semseg models fetch out/my-model            # a folder: checked only

Prints the folder, for test.py --cfg FOLDER/config.yaml DIR FOLDER.""", overrides=False)
    parser.add_argument("model", help="model folder or Hugging Face Hub repo id (owner/name)")
    parser.add_argument("--revision", help="Hub branch, tag or commit (default: main)")
    parser.add_argument("--cache-dir", metavar="DIR", help="Hub cache folder (default: the "
                                                           "Hub's, HF_HUB_CACHE)")
    args = parse_command(parser, argv)

    def body() -> None:
        from ..checkpoints.hub import check_model_folder, resolve_model
        folder = resolve_model(args.model, revision=args.revision, cache_dir=args.cache_dir)
        check_model_folder(folder)
        print(folder)
    return run_command(body)


def _push(argv: list[str]) -> int:
    parser = _parser("push", """\
example:
  python -m mit_semseg models push out/my-model owner/my-model --private

Log in first (hf auth login) or pass --token. The folder is checked against its
SHA256SUMS before the upload.""", overrides=False)
    parser.add_argument("folder", help="model folder (written by models save)")
    parser.add_argument("repo_id", help="Hub repo id owner/name (created if needed)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--token", help="Hub token (default: the logged-in one)")
    parser.add_argument("--message", help="commit message")
    args = parse_command(parser, argv)

    def body() -> None:
        from ..checkpoints.hub import push_to_hub
        url = push_to_hub(args.folder, args.repo_id, private=args.private or None,
                          token=args.token, commit_message=args.message)
        print(f"uploaded {args.folder} to {args.repo_id}: {url}")
    return run_command(body)
