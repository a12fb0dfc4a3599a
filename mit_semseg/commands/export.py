"""``python -m mit_semseg export``: export encoder + decoder as one ONNX graph, then
check it in onnxruntime against PyTorch.

Export encoder + decoder as one ONNX graph (input: normalised image [1,3,H,W],
dynamic H and W; output: class scores before softmax at feature resolution;
class table and preprocessing in the metadata), then check it in onnxruntime
against PyTorch.
"""
from __future__ import annotations

import os
from typing import Sequence

from ..runtime.command import CommandParser, command_parser, parse_command, run_command

EPILOG = """\
example:
  python -m mit_semseg export --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml \\
      --checkpoint-dir ckpt/ade20k-resnet50dilated-ppm_deepsup --onnx model.onnx

Exit status: 0 written and checked, 1 error (one line on stderr; also when the
onnxruntime scores differ by more than --tolerance), 2 usage error."""

_DESCRIPTION = __doc__.split("\n\n", 1)[1]


def build_parser() -> CommandParser:
    """The command's parser (flags and overrides)."""
    from ..export.onnx import DEFAULT_OPSET, DEFAULT_TOLERANCE, EXPORTERS
    parser = command_parser("python -m mit_semseg export", _DESCRIPTION, EPILOG, config="required")
    from ._shared import add_weight_arguments
    add_weight_arguments(parser)
    parser.add_argument("--onnx", required=True, metavar="FILE", help="output .onnx file")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help="ONNX opset (default %(default)s)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="auto",
                        help="torch.onnx exporter (default auto: torchscript where available)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest accepted onnxruntime vs PyTorch score difference, relative "
                             "to the largest |score| PyTorch gives (default %(default)g)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = build_parser()
    args = parse_command(parser, argv)
    from ._shared import check_weight_arguments
    check_weight_arguments(parser, args)

    def body() -> int:
        from ..config import load_cfg
        from ..errors import MitSemsegError
        from ..export.onnx import build_network, compare_onnx, export_onnx, exportable, metadata
        cfg = load_cfg(args.cfg, args.opts)
        from ._shared import weight_files
        enc, dec = weight_files(args, cfg)
        network = build_network(cfg, enc, dec)
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise MitSemsegError(f"{exc.name} is not installed; pip install -e \".[onnx]\"") \
                from None
        os.makedirs(os.path.dirname(os.path.abspath(args.onnx)), exist_ok=True)
        export_onnx(exportable(network), args.onnx, props=metadata(cfg), opset=args.opset,
                    exporter=args.exporter)
        diff_abs, diff = compare_onnx(args.onnx, network, sizes=((97, 75), (64, 131)))
        print(f"wrote {args.onnx} ({os.path.getsize(args.onnx) / 2 ** 20:.1f} MiB, "
              f"{cfg.MODEL.arch_encoder}+{cfg.MODEL.arch_decoder}, {cfg.DATASET.num_class} "
              f"classes)")
        verdict = "ok" if diff <= args.tolerance else "FAILED"
        print(f"self-check {verdict}: onnxruntime vs PyTorch scores differ by {diff:.2e} of the "
              f"largest |score| (tolerance {args.tolerance:g}, relative to that score; absolute "
              f"difference {diff_abs:.3g})")
        if not diff <= args.tolerance:
            raise MitSemsegError(f"{args.onnx}: onnxruntime scores differ from PyTorch by "
                                 f"{diff:.2e} of the largest score (> --tolerance "
                                 f"{args.tolerance:g})")
        return 0
    return run_command(body)
