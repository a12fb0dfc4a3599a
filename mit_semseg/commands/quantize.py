"""``python -m mit_semseg quantize``: an int8 onnxruntime model calibrated on your
images, checked for accuracy and timed on this machine before it is written.

Make an int8 ONNX model (static quantization in onnxruntime's QDQ format: int8
weights per output channel, uint8 activations) from a config and its
checkpoint, a model folder, or a file of python -m mit_semseg export. The
activation ranges are calibrated on your images (--calib: a folder, an image
list or an odgt; default the config's DATASET.list_train). Then int8 is
compared with fp32 on held-out images (--holdout; default DATASET.list_val:
mIoU and pixel accuracy of both; without ground truth, the share of pixels whose
labels are equal) and both are timed side by side on this CPU. The file is
written only when the int8 model holds accuracy (--max-drop, --min-agreement)
unless --keep; it records how it was calibrated and checked in its metadata.
Run it with TEST.backend onnxruntime TEST.onnx FILE (VAL.* for eval.py).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from ..runtime.command import CommandParser, command_parser, parse_command, run_command

EPILOG = """\
examples:
  python -m mit_semseg quantize --cfg config/synthetic-demo.yaml --onnx demo-int8.onnx
  python -m mit_semseg quantize --cfg CFG --checkpoint-dir ckpt/run --onnx model-int8.onnx \\
      --calib photos/ --holdout data/validation.odgt --method percentile
  python -m mit_semseg quantize --from-onnx model.onnx --calib photos/ --onnx model-int8.onnx
  python test.py --imgs photos/ --cfg CFG TEST.backend onnxruntime TEST.onnx model-int8.onnx

Exit status: 0 written (verified, or kept with --keep), 1 error (one line on
stderr), among them an int8 model below the accuracy thresholds, 2 usage error."""

_DESCRIPTION = __doc__.split("\n\n", 1)[1]


def build_parser() -> CommandParser:
    """The command's parser (flags and overrides)."""
    from ..export.quantize import (DEFAULT_FP32_LAYERS, DEFAULT_MAX_DROP, DEFAULT_METHOD,
                                   DEFAULT_MIN_AGREEMENT, FP32_LAYERS, METHODS)
    parser = command_parser("python -m mit_semseg quantize", _DESCRIPTION, EPILOG,
                            config="optional")
    source = parser.add_argument_group("the fp32 model (one of)")
    from ._shared import add_weight_arguments
    add_weight_arguments(source)
    source.add_argument("--from-onnx", metavar="FILE",
                        help="a float32 .onnx of python -m mit_semseg export (--cfg optional: "
                             "when given, the file must agree with it)")
    parser.add_argument("--onnx", required=True, metavar="FILE", help="the int8 .onnx to write")
    data = parser.add_argument_group("images")
    data.add_argument("--calib", metavar="SPEC",
                      help="calibration images: a folder (recursive), a text file with one "
                           "image path a line, or an .odgt list (default: DATASET.list_train)")
    data.add_argument("--calib-count", type=int, default=32, metavar="N",
                      help="calibration images, spread evenly over --calib (default %(default)s)")
    data.add_argument("--holdout", metavar="SPEC",
                      help="held-out images, as --calib; an .odgt with annotations gives mIoU and "
                           "pixel accuracy (default: DATASET.list_val if it exists, else a "
                           "quarter of --calib, kept out of the calibration)")
    data.add_argument("--holdout-count", type=int, default=16, metavar="N",
                      help="held-out images, spread evenly (default %(default)s; 0: all)")
    how = parser.add_argument_group("quantization")
    how.add_argument("--method", choices=(*METHODS, "all"), default=DEFAULT_METHOD,
                     help="activation range calibration (default %(default)s, the best on the "
                          "demo model; docs/deployment.md); all: try each, keep the most "
                          "accurate on the held-out images (mIoU to 0.1 points, then labels "
                          "equal to fp32's)")
    how.add_argument("--fp32-layers", choices=FP32_LAYERS, default=DEFAULT_FP32_LAYERS,
                     help="layers left in float32: the first convolution, the classifier "
                          "(default %(default)s)")
    how.add_argument("--reduce-range", choices=("auto", "on", "off"), default="auto",
                     help="7-bit weights, which avoid int16 overflow in the AVX2 kernels of "
                          "x86 CPUs without VNNI/AMX but round more; auto (default): on such a "
                          "CPU try 7 and 8 bits and keep the more accurate, else 8 bits")
    guard = parser.add_argument_group("the checks")
    guard.add_argument("--max-drop", type=float, default=100 * DEFAULT_MAX_DROP, metavar="POINTS",
                       help="largest drop of mIoU and of pixel accuracy in percentage points, "
                            "with ground truth (default %(default)g)")
    guard.add_argument("--min-agreement", type=float, default=100 * DEFAULT_MIN_AGREEMENT,
                       metavar="PERCENT",
                       help="least share of held-out pixels whose int8 label equals fp32's, "
                            "without ground truth (default %(default)g)")
    guard.add_argument("--keep", action="store_true",
                       help="write the file even when it fails the accuracy check (its "
                            "metadata then says int8_verified false)")
    guard.add_argument("--speed-images", type=int, default=8, metavar="N",
                       help="calibration images timed with fp32 and int8 (default %(default)s)")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="onnxruntime threads (default 0: PyTorch's, one per core)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = build_parser()
    args = parse_command(parser, argv)
    from ._shared import check_weight_arguments
    check_weight_arguments(parser, args)
    if args.from_onnx is None and args.cfg is None:
        parser.error("give --cfg (with its checkpoint) or --from-onnx FILE")
    if args.from_onnx and (args.encoder_weights or args.checkpoint_dir):
        parser.error("--from-onnx replaces the checkpoint flags; give one or the other")
    if args.calib_count < 1 or args.holdout_count < 0 or args.speed_images < 1:
        parser.error("--calib-count and --speed-images must be >= 1, --holdout-count >= 0")
    return run_command(lambda: _run(args))


# ============================================================================ the steps

def _run(args: Any) -> int:
    import tempfile

    import torch

    from ..config import cfg as default_cfg, load_cfg
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_cfg(args.cfg, args.opts) if args.cfg else default_cfg.clone()
    if not args.cfg and args.opts:
        cfg.merge_from_list(args.opts)
    out_dir = os.path.dirname(os.path.abspath(args.onnx))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=out_dir) as tmp:
        fp32_path = args.from_onnx or _export_fp32(args, cfg, os.path.join(tmp, "fp32.onnx"))
        return _quantize(args, cfg, fp32_path, tmp)


def _export_fp32(args: Any, cfg: Any, path: str) -> str:
    """The config's model as an fp32 ONNX file at ``path``, checked as export checks it."""
    from ..errors import MitSemsegError
    from ..export.onnx import (DEFAULT_TOLERANCE, build_network, compare_onnx, export_onnx,
                               exportable, metadata)
    from ..export.quantize import require_onnx
    from ._shared import weight_files
    enc, dec = weight_files(args, cfg, ", or an exported file with --from-onnx")
    network = build_network(cfg, enc, dec)
    require_onnx()
    export_onnx(exportable(network), path, props=metadata(cfg))
    _, diff = compare_onnx(path, network, sizes=((97, 75),))
    if not diff <= DEFAULT_TOLERANCE:
        raise MitSemsegError(f"the fp32 export of {enc} / {dec} differs from PyTorch by "
                             f"{diff:.2e} of the largest score (> {DEFAULT_TOLERANCE:g}); see "
                             "python -m mit_semseg export")
    print(f"exported the fp32 model ({cfg.MODEL.arch_encoder}+{cfg.MODEL.arch_decoder}, "
          f"{cfg.DATASET.num_class} classes; onnxruntime vs PyTorch {diff:.1e})")
    return path


def _quantize(args: Any, cfg: Any, fp32_path: str, tmp: str) -> int:
    import torch

    from ..config import ConfigError
    from ..data.transforms import Preprocess
    from ..evaluation.metrics import SegmentationMetrics
    from ..export import quantize as q
    from ..inference.backends import OnnxBackend, check_metadata, config_claims, file_settings
    from ..inference.engine import InferenceEngine
    threads = torch.get_num_threads()
    try:
        fp32 = OnnxBackend(fp32_path, threads=threads)
    except ValueError as exc:  # not an ONNX file, or not one model -> scores
        raise q.QuantizeError(str(exc)) from None
    if fp32.precision != "fp32":
        raise q.QuantizeError(f"--from-onnx {fp32_path}: its metadata says precision "
                              f"{fp32.precision}; quantize the fp32 export")
    if args.from_onnx and args.cfg:
        check_metadata(fp32, config_claims(cfg), "TEST")
    try:
        preprocess, _ = file_settings(fp32)
    except ConfigError:  # a file not written by export: the config's resize rule
        if not args.cfg:
            raise q.QuantizeError(f"--from-onnx {fp32_path} does not record its preprocessing "
                                  "(a file of python -m mit_semseg export does); give --cfg "
                                  "with the model's DATASET settings") from None
        preprocess = Preprocess.from_config(cfg.DATASET)

    calib, holdout = _images(args, cfg)
    print(f"calibration: {len(calib)} images from {_spec(args.calib, cfg, 'list_train')}; "
          f"held out: {holdout.count} images from {holdout.source}"
          f"{' (with annotations)' if holdout.labeled else ''}")
    flags = q.cpu_flags()
    widths = q.weight_widths(args.reduce_range, q.int8_instructions(flags))
    methods = list(q.METHODS) if args.method == "all" else [args.method]
    fp32_engine = InferenceEngine(None, device="cpu", backend=fp32, preprocess=preprocess)
    reference = q.predict_heldout(fp32_engine, holdout.samples(), total=holdout.count,
                                  desc="held-out images (fp32)")
    tried = []
    for method in methods:
        for reduce_range in widths:
            path = os.path.join(tmp, f"int8-{method}-{7 if reduce_range else 8}.onnx")
            done = q.quantize_file(fp32_path, path, q.calibration_copies(calib, preprocess),
                                   count=len(calib), method=method,
                                   fp32_layers=args.fp32_layers, reduce_range=reduce_range)
            name = f"{method}, {7 if reduce_range else 8}-bit weights"
            print(f"calibrated ({name} per channel, fp32 layers: "
                  f"{', '.join(done['fp32_nodes']) or 'none'}) in {done['seconds']:.1f} s")
            int8 = OnnxBackend(path, threads=threads)
            int8_engine = InferenceEngine(None, device="cpu", backend=int8,
                                          preprocess=preprocess)
            result = q.compare_heldout(reference, q.predict_heldout(
                int8_engine, holdout.samples(), total=holdout.count,
                desc="held-out images (int8)"), fp32.num_class, metrics=SegmentationMetrics)
            print(q.heldout_table(result))
            tried.append((name, path, done, int8, result))
    name, path, done, int8, result = max(tried, key=lambda t: _score(t[4]))
    if len(tried) > 1:
        print(f"most accurate on the held-out images: {name}")
    method = done["method"]

    copies = [torch.from_numpy(x) for x in
              q.calibration_copies(calib[:args.speed_images], preprocess)]
    fp32_s, int8_s = q.time_models(fp32, int8, copies)
    print(q.speed_verdict(fp32_s, int8_s, flags))

    failed = q.accuracy_guard(result, args.min_agreement / 100, args.max_drop / 100)
    thresholds = {"min_agreement": args.min_agreement / 100, "max_drop": args.max_drop / 100}
    if failed:
        thresholds["failed"] = failed
    speed = {"fp32_ms": 1e3 * fp32_s, "int8_ms": 1e3 * int8_s, "threads": threads,
             "cpu": q.cpu_name(), "int8_instructions": q.int8_instructions(flags)}
    props = q.int8_metadata(done, images=len(calib), source=_spec(args.calib, cfg, "list_train"),
                            sha256=q.images_sha256(calib), sizes=preprocess.img_sizes,
                            heldout=result, verified=failed is None, thresholds=thresholds,
                            speed=speed)
    q.add_metadata(path, props)  # beside the fp32 file's, which quantization keeps
    if failed and not args.keep:
        others = [m for m in q.METHODS if m != method]
        layers = "" if args.fp32_layers == "both" else " or --fp32-layers both"
        raise q.AccuracyGuardError(
            f"{args.onnx} not written: {failed}; calibrate on more images like the ones you "
            f"will segment (--calib, --calib-count), try --method {' or '.join(others)}"
            f"{layers}, or write it anyway with --keep")
    os.replace(path, args.onnx)
    size = os.path.getsize(args.onnx) / 2 ** 20
    if failed:
        print(f"kept {args.onnx} ({size:.1f} MiB) although {failed} (--keep; its metadata says "
              f"int8_verified false)")
    else:
        print(f"wrote {args.onnx} ({size:.1f} MiB, int8, verified on {result.images} held-out "
              f"images); run it with TEST.backend onnxruntime TEST.onnx {args.onnx}")
    return 0


# ============================================================================ images

def _score(result: Any) -> tuple[float, float]:
    """Order of held-out results: int8 mIoU to 0.1 points (with ground truth; finer
    differences are noise), then the share of labels equal to fp32's."""
    miou = round(100 * result.int8["mean_iou"], 1) if result.int8 else 0.0
    return miou, result.agreement


def _spec(spec: str | None, cfg: Any, key: str) -> str:
    return spec or f"DATASET.{key} {cfg.DATASET[key]}"


def _evenly(items: Sequence[Any], count: int) -> list[Any]:
    """``count`` items spread evenly over ``items`` (all of them for 0 or ``len(items)``)."""
    import numpy as np
    if count <= 0 or count >= len(items):
        return list(items)
    return [items[int(i)] for i in np.unique(np.linspace(0, len(items) - 1, count).round())]


def _list_images(spec: str, cfg: Any, flag: str) -> list[str]:
    """Images of a folder, an odgt or a text list (one path a line, relative to the list)."""
    from ..errors import InputNotFoundError
    from ..prediction import list_test_images
    if os.path.isfile(spec) and spec.lower().endswith((".txt", ".lst", ".list")):
        base = os.path.dirname(os.path.abspath(spec))
        with open(spec, encoding="utf-8") as fh:
            paths = [os.path.join(base, line.strip()) for line in fh if line.strip()]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise InputNotFoundError(f"{flag} {spec}: {len(missing)} listed images not found, "
                                     f"e.g. {missing[0]}")
    else:
        try:
            paths, _ = list_test_images(spec, cfg.DATASET.root_dataset)
        except InputNotFoundError as exc:
            raise InputNotFoundError(str(exc).replace("--imgs", flag, 1)) from None
    if not paths:
        raise InputNotFoundError(f"{flag} {spec}: no images")
    return paths


class _HeldOut:
    """The held-out images: ``samples()`` yields (uint8 photo, 0-based labels or None)."""

    def __init__(self, source: str, paths: list[str], records: list[dict] | None,
                 cfg: Any) -> None:
        self.source, self.paths, self.records, self.cfg = source, paths, records, cfg
        self.count, self.labeled = len(paths), records is not None

    def samples(self) -> Any:
        import numpy as np

        from ..data.datasets import ValDataset
        from ..data.io import read_image
        if self.records is not None:
            dataset = ValDataset(self.cfg.DATASET.root_dataset, self.records, self.cfg.DATASET)
            for k in range(len(dataset)):
                sample = dataset[k]
                yield sample["img_ori"], sample["seg_label"][0].numpy()
        else:
            for path in self.paths:
                yield np.asarray(read_image(path)), None


def _annotated(spec: str) -> list[dict] | None:
    """The records of an odgt whose every line names an annotation, else None."""
    from ..data.datasets import read_odgt_lines
    from ..errors import InputNotFoundError
    if not spec.lower().endswith(".odgt"):
        return None
    if not os.path.isfile(spec):
        raise InputNotFoundError(f"{spec}: odgt file not found")
    records = []
    for _, rec, error in read_odgt_lines(spec):
        if error is not None or not isinstance(rec, dict) or "fpath_segm" not in rec:
            return None
        records.append(rec)
    return records or None


def _images(args: Any, cfg: Any) -> tuple[list[str], _HeldOut]:
    """Calibration image paths and the held-out set, disjoint."""
    from ..errors import InputNotFoundError
    calib_spec = args.calib or cfg.DATASET.list_train
    if not calib_spec:
        raise InputNotFoundError("no calibration images: give --calib (a folder, list or odgt)")
    calib_all = _list_images(calib_spec, cfg, "--calib")
    hold_spec = args.holdout
    if hold_spec is None and args.cfg and os.path.isfile(cfg.DATASET.list_val or ""):
        hold_spec = cfg.DATASET.list_val
    if hold_spec is not None:
        records = _annotated(hold_spec)
        if records is not None:
            records = _evenly(records, args.holdout_count)
            root = cfg.DATASET.root_dataset
            paths = [os.path.join(root, r["fpath_img"]) for r in records]
        else:
            paths = _evenly(_list_images(hold_spec, cfg, "--holdout"), args.holdout_count)
        holdout = _HeldOut(hold_spec, paths, records, cfg)
        held = {os.path.realpath(p) for p in paths}
        calib_all = [p for p in calib_all if os.path.realpath(p) not in held]
        if not calib_all:
            raise InputNotFoundError(f"--calib {calib_spec}: every image is also a held-out one "
                                     f"({hold_spec}); calibrate on other images")
    else:
        if len(calib_all) < 2:
            raise InputNotFoundError(f"--calib {calib_spec}: one image cannot be split into "
                                     "calibration and held-out images; give --holdout")
        n = min(args.holdout_count or len(calib_all) // 4, max(1, len(calib_all) // 4))
        paths = _evenly(calib_all[1:], n)  # the first image stays for calibration
        held = set(paths)
        calib_all = [p for p in calib_all if p not in held]
        holdout = _HeldOut(f"{calib_spec} (a quarter, not calibrated on)", paths, None, cfg)
    return _evenly(calib_all, args.calib_count), holdout
