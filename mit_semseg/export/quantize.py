"""Static int8 quantization of an exported model, calibrated on the user's images, and
the two checks that say whether to use it (``python -m mit_semseg quantize``).

* ``quantize_file``: fp32 ONNX file (``export.onnx``) -> int8 file in onnxruntime's
  QDQ format: weights int8 per output channel, activations uint8 per tensor, their
  ranges calibrated on ``calibration_copies`` of the user's images (``METHODS``),
  chosen layers (``fp32_layer_nodes``) left in float32. Calibration runs one image
  at a time, so memory stays that of one image's activations.
* ``predict_heldout`` + ``compare_heldout`` + ``accuracy_guard``: int8 against
  fp32 on held-out images through the engine (labels equal to fp32's; mIoU and
  pixel accuracy both ways where there are ground-truth labels) and the
  threshold that refuses a file.
* ``time_models`` + ``speed_verdict``: fp32 and int8 timed side by side on this
  machine, and what that means on a CPU with or without int8 dot-product
  instructions (``int8_instructions``).

The int8 file carries the fp32 file's metadata (``export.onnx.metadata``) plus
``precision`` ``"int8"`` and ``int8_*`` keys that say how it was made and checked
(``int8_metadata``); the onnxruntime backend reads them
(``inference.backends.OnnxBackend.precision``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import platform
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from ..data.io import read_image
from ..data.transforms import Preprocess
from ..errors import MitSemsegError
from ..runtime.process import cpu_flags, cpu_name

__all__ = ["METHODS", "DEFAULT_METHOD", "FP32_LAYERS", "DEFAULT_FP32_LAYERS",
           "DEFAULT_MIN_AGREEMENT", "DEFAULT_MAX_DROP", "FASTER", "QuantizeError",
           "AccuracyGuardError", "require_onnx", "cpu_flags", "cpu_name", "int8_instructions",
           "weight_widths", "speed_verdict", "calibration_copies", "images_sha256", "fp32_layer_nodes",
           "quantize_file", "HeldOutResult", "HeldOutLabels", "predict_heldout",
           "compare_heldout", "accuracy_guard",
           "heldout_table", "time_models", "int8_metadata", "add_metadata"]

# calibration methods (onnxruntime's MinMax, Percentile 99.999, Entropy/KL)
METHODS = ("minmax", "percentile", "entropy")
DEFAULT_METHOD = "minmax"
# layers kept in float32: the convolution that reads the image, the classifier
FP32_LAYERS = ("none", "first", "last", "both")
DEFAULT_FP32_LAYERS = "both"
# the accuracy guard: share of held-out pixels whose int8 label equals fp32's, and
# the largest drop of mIoU / pixel accuracy (fractions; 0.005 = 0.5 points)
DEFAULT_MIN_AGREEMENT = 0.995
DEFAULT_MAX_DROP = 0.005
# int8 counts as faster from this fp32 / int8 time ratio on (timing noise below)
FASTER = 1.10

# /proc/cpuinfo flags of int8 dot-product instructions onnxruntime's kernels use
_INT8_FLAGS = {"avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI", "amx_int8": "AMX-INT8",
               "asimddp": "Arm dot product", "i8mm": "Arm int8 matrix multiply"}


class QuantizeError(MitSemsegError, ValueError):
    """Quantization cannot run on this input (no images, a bad model file, ...)."""


class AccuracyGuardError(QuantizeError):
    """The int8 model lost more accuracy on the held-out images than allowed."""


def require_onnx() -> Any:
    """``onnxruntime.quantization``, or QuantizeError naming the extra to install."""
    try:
        import onnx  # noqa: F401
        import onnxruntime.quantization as quantization
    except ImportError as exc:
        raise QuantizeError(f"{exc.name} is not installed; int8 quantization needs the onnx "
                            "extra: pip install -e \".[onnx]\"") from None
    return quantization


# ============================================================================ the CPU

def int8_instructions(flags: Iterable[str] | None = None) -> list[str]:
    """Names of the int8 dot-product instruction sets among ``flags`` (default: this
    CPU's): AVX-512 VNNI, AVX-VNNI, AMX-INT8, Arm dot product / I8MM."""
    have = cpu_flags() if flags is None else set(flags)
    return [name for flag, name in _INT8_FLAGS.items() if flag in have]


def speed_verdict(fp32_s: float, int8_s: float, flags: Iterable[str] | None = None,
                  cpu: str | None = None) -> str:
    """One line on int8's speed here: the measured fp32 / int8 ratio, and on a CPU
    without int8 dot-product instructions (``flags``; default this CPU's) that
    int8 will not be faster here."""
    ratio = fp32_s / int8_s if int8_s > 0 else float("nan")
    have = int8_instructions(flags)
    cpu = cpu or cpu_name()
    measured = (f"int8 {int8_s * 1e3:.1f} ms vs fp32 {fp32_s * 1e3:.1f} ms per image: "
                f"{ratio:.2f}x fp32's speed")
    if not have:
        if ratio >= FASTER:
            return (f"speed: {measured}, although {cpu} has no int8 dot-product instructions "
                    f"(AVX-512 VNNI, AVX-VNNI, AMX); time it on your real photos before "
                    f"relying on it")
        return (f"speed: int8 will not be faster here: {cpu} has no int8 dot-product "
                f"instructions (AVX-512 VNNI, AVX-VNNI, AMX), and {measured}; keep fp32 on "
                f"this machine (int8 pays off on CPUs with VNNI or AMX)")
    if ratio >= FASTER:
        return f"speed: {measured} on {cpu} ({', '.join(have)})"
    return (f"speed: int8 is not faster here: {measured} on {cpu}, although it has "
            f"{', '.join(have)}; keep fp32 for this model on this machine")


def weight_widths(choice: str, instructions: Sequence[str]) -> list[bool]:
    """``reduce_range`` values to try for ``choice`` ("auto", "on", "off") on a CPU with
    the int8 ``instructions`` (``int8_instructions``): 7-bit weights (True) avoid the int16 overflow of the AVX2
    kernels that x86 CPUs without VNNI/AMX run, but round more, and which loses
    less depends on the model; "auto" tries both there, 8 bits elsewhere."""
    if choice != "auto":
        return [choice == "on"]
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    return [True, False] if x86 and not instructions else [False]


# ============================================================================ calibration data

def _rgb(image: str | Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    return read_image(os.fspath(image))


def calibration_copies(images: Sequence[str | Image.Image | np.ndarray],
                       preprocess: Preprocess) -> Iterable[np.ndarray]:
    """The network inputs calibration sees: image ``i`` resized as the engine does
    to the short side ``imgSizes[i % len(imgSizes)]`` (every scale occurs, each image
    runs once), normalised, ``[1, 3, h, w]`` float32; generated one at a time."""
    sizes = preprocess.img_sizes
    for i, image in enumerate(images):
        (copy,) = preprocess.scales(_rgb(image), [sizes[i % len(sizes)]])
        yield np.ascontiguousarray(copy.numpy(), dtype=np.float32)


def images_sha256(paths: Sequence[str]) -> str:
    """SHA-256 over the SHA-256 of each file's bytes, in list order: names the
    calibration set by content, wherever its files are."""
    outer = hashlib.sha256()
    for path in paths:
        inner = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                inner.update(block)
        outer.update(inner.hexdigest().encode())
    return outer.hexdigest()


# ============================================================================ quantization

def fp32_layer_nodes(model: Any, which: str) -> list[str]:
    """Names of the nodes ``which`` names (``FP32_LAYERS``) in ``model`` (an
    ``onnx.ModelProto``): ``first`` the convolution(s) that read the graph input
    through non-convolution nodes only (the stem), ``last`` the convolution(s)
    whose output reaches the graph output so (the classifier), ``both``, or
    ``none``."""
    if which not in FP32_LAYERS:
        raise QuantizeError(f"--fp32-layers: unknown choice {which!r}; expected one of "
                            f"{list(FP32_LAYERS)}")
    parts = {"both": {"first", "last"}, "none": set()}.get(which, {which})
    graph = model.graph
    constant = {t.name for t in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    names: list[str] = []
    if "first" in parts:  # forwards from the input to the first convolutions met
        todo, seen = [graph.input[0].name], set()
        while todo:
            for node in consumers.get(todo.pop(), []):
                if node.name not in seen:
                    seen.add(node.name)
                    if node.op_type == "Conv":
                        names.append(node.name)
                    else:
                        todo += list(node.output)
    if "last" in parts:  # backwards from the output to the last convolutions met
        todo, seen = [o.name for o in graph.output], set()
        while todo:
            node = producer.get(todo.pop())
            if node is not None and node.name not in seen:
                seen.add(node.name)
                if node.op_type == "Conv":
                    names.append(node.name)
                else:
                    todo += [t for t in node.input if t and t not in constant]
    return list(dict.fromkeys(names))


def _name_nodes(model: Any) -> None:
    """Give every unnamed node a unique name (the quantizer selects nodes by name)."""
    taken = {n.name for n in model.graph.node if n.name}
    for k, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{k}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


@contextlib.contextmanager
def _quiet() -> Iterable[None]:
    """onnxruntime's quantization prints a line per calibration step and logs advice
    on the root logger; keep both off the console while it runs."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def quantize_file(fp32_path: str, out_path: str, inputs: Iterable[np.ndarray], *, count: int,
                  method: str = DEFAULT_METHOD, fp32_layers: str = DEFAULT_FP32_LAYERS,
                  reduce_range: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write the int8 (QDQ) version of the fp32 ONNX file ``fp32_path`` to ``out_path``,
    calibrated with ``method`` on ``inputs`` (``count`` normalised ``[1, 3, h, w]``
    arrays, e.g. ``calibration_copies``; a tqdm bar counts them), weights int8 per
    output channel (7 bits with ``reduce_range``), activations uint8, the
    ``fp32_layers`` left in float32. The fp32 file's metadata is kept. Returns what
    was done: ``method``, ``fp32_nodes``, ``reduce_range``, ``seconds``."""
    quantization = require_onnx()
    import onnx
    from tqdm import tqdm
    if method not in METHODS:
        raise QuantizeError(f"--method: unknown calibration method {method!r}; expected one of "
                            f"{list(METHODS)}")
    if count < 1:
        raise QuantizeError("calibration needs at least one image")
    tic = time.perf_counter()
    model = onnx.load(fp32_path)
    _name_nodes(model)
    excluded = fp32_layer_nodes(model, fp32_layers)
    input_name = model.graph.input[0].name
    kind = {"minmax": quantization.CalibrationMethod.MinMax,
            "percentile": quantization.CalibrationMethod.Percentile,
            "entropy": quantization.CalibrationMethod.Entropy}[method]
    bar = tqdm(total=count, desc=f"calibrating ({method})", unit="image", disable=not progress)
    reader = _Reader(quantization.CalibrationDataReader, input_name, iter(inputs), count, bar)
    named = out_path + ".named.onnx"
    onnx.save(model, named)
    try:
        with _quiet():
            quantization.quantize_static(
                named, out_path, reader, quant_format=quantization.QuantFormat.QDQ,
                per_channel=True, reduce_range=bool(reduce_range),
                activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8, calibrate_method=kind,
                nodes_to_exclude=excluded,
                # one image per calibration step: memory of one image's activations
                extra_options={"CalibStridedMinMax": 1})
    finally:
        bar.close()
        with contextlib.suppress(OSError):
            os.remove(named)
    if reader.served != count:
        raise QuantizeError(f"calibration read {reader.served} images, expected {count}")
    return {"method": method, "fp32_layers": fp32_layers, "fp32_nodes": excluded,
            "reduce_range": bool(reduce_range), "seconds": time.perf_counter() - tic}


def _Reader(base: type, input_name: str, inputs: Iterable[np.ndarray], count: int,
            bar: Any) -> Any:
    """An onnxruntime ``CalibrationDataReader`` that serves ``inputs`` one by one in
    the strided calibration (``set_range`` per image) and moves ``bar``."""

    class Reader(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.served = 0
            self._left = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._left <= 0:
                return None
            x = next(inputs, None)
            if x is None:
                return None
            self._left -= 1
            self.served += 1
            bar.update(1)
            return {input_name: x}

        def __len__(self) -> int:
            return count

        def set_range(self, start_index: int, end_index: int) -> None:
            self._left = end_index - start_index

    return Reader()


# ============================================================================ accuracy

@dataclasses.dataclass
class HeldOutResult:
    """int8 against fp32 on held-out images: ``agreement`` (share of pixels whose
    labels are equal), ``pixels``, ``images``; with ground truth ``fp32`` / ``int8``
    (``{"mean_iou", "pixel_accuracy"}``), else None; ``seconds`` per model."""

    images: int
    pixels: int
    agreement: float
    fp32: dict[str, float] | None = None
    int8: dict[str, float] | None = None
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class HeldOutLabels:
    """One model's labels of the held-out images (``labels``), their ground truth
    (``truth``: 0-based, -1 unlabeled, or None per image) and the seconds it took."""

    labels: list[np.ndarray]
    truth: list[np.ndarray | None]
    seconds: float


def predict_heldout(engine: Any, samples: Iterable[tuple[np.ndarray, np.ndarray | None]], *,
                    total: int | None = None, desc: str = "held-out images",
                    progress: bool = True) -> HeldOutLabels:
    """Labels of every ``(photo, truth or None)`` of ``samples`` (uint8 ``H x W x 3``)
    by ``engine`` (an ``InferenceEngine``: its scales, mode and fusion)."""
    from tqdm import tqdm
    labels, truth, seconds = [], [], 0.0
    with tqdm(total=total, desc=desc, unit="image", disable=not progress) as bar:
        for photo, label in samples:
            tic = time.perf_counter()
            labels.append(np.asarray(engine.predict_image(photo).labels))
            seconds += time.perf_counter() - tic
            truth.append(label)
            bar.update(1)
    if not labels:
        raise QuantizeError("no held-out images to check the int8 model on")
    return HeldOutLabels(labels, truth, seconds)


def compare_heldout(fp32: HeldOutLabels, int8: HeldOutLabels, num_class: int, *,
                    metrics: Callable[[int], Any] | None = None) -> HeldOutResult:
    """int8's labels against fp32's (same images, ``predict_heldout``); where there is
    ground truth and ``metrics`` (``metrics(num_class)``: an accumulator with
    ``update(pred, label)``, ``mean_iou`` and ``pixel_accuracy``, such as
    ``evaluation.metrics.SegmentationMetrics``), both models' mIoU and pixel accuracy."""
    equal = sum(int((a == b).sum()) for a, b in zip(fp32.labels, int8.labels))
    pixels = sum(a.size for a in fp32.labels)
    scores: dict[str, dict[str, float] | None] = {"fp32": None, "int8": None}
    if metrics is not None and any(t is not None for t in fp32.truth):
        for name, run in (("fp32", fp32), ("int8", int8)):
            acc = metrics(num_class)
            for pred, truth in zip(run.labels, run.truth):
                if truth is not None:
                    acc.update(pred, truth)
            scores[name] = {"mean_iou": float(acc.mean_iou),
                            "pixel_accuracy": float(acc.pixel_accuracy)}
    return HeldOutResult(len(fp32.labels), pixels, equal / pixels, scores["fp32"],
                         scores["int8"], {"fp32": fp32.seconds, "int8": int8.seconds})


def accuracy_guard(result: HeldOutResult, min_agreement: float = DEFAULT_MIN_AGREEMENT,
                   max_drop: float = DEFAULT_MAX_DROP) -> str | None:
    """None when the int8 model holds accuracy, else the reason in words. With ground
    truth: mIoU and pixel accuracy may drop by at most ``max_drop`` (fractions);
    without: at least ``min_agreement`` of the pixels keep fp32's label."""
    if result.fp32 is not None and result.int8 is not None:
        for key, words in (("mean_iou", "mIoU"), ("pixel_accuracy", "pixel accuracy")):
            drop = result.fp32[key] - result.int8[key]
            if drop > max_drop:
                return (f"{words} drops from {100 * result.fp32[key]:.2f} to "
                        f"{100 * result.int8[key]:.2f} on {result.images} held-out images "
                        f"({100 * drop:.2f} points > --max-drop {100 * max_drop:g})")
        return None
    if result.agreement < min_agreement:
        return (f"int8 labels equal fp32's on {100 * result.agreement:.2f} % of the pixels of "
                f"{result.images} held-out images (< --min-agreement "
                f"{100 * min_agreement:g} %)")
    return None


def heldout_table(result: HeldOutResult) -> str:
    """The comparison as a small text table."""
    rows = [("", "fp32", "int8")]
    if result.fp32 is not None and result.int8 is not None:
        for key, words in (("mean_iou", "mIoU"), ("pixel_accuracy", "pixel accuracy")):
            rows.append((words, f"{100 * result.fp32[key]:.2f}", f"{100 * result.int8[key]:.2f}"))
    rows.append(("labels equal to fp32", "100.00 %", f"{100 * result.agreement:.2f} %"))
    rows.append(("seconds (whole set)", f"{result.seconds.get('fp32', 0):.1f}",
                 f"{result.seconds.get('int8', 0):.1f}"))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"held-out check: {result.images} images, {result.pixels} pixels"]
    lines += ["  " + "  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(r, width))) for r in rows]
    return "\n".join(lines)


# ============================================================================ speed

def time_models(fp32: Callable[[Any], Any], int8: Callable[[Any], Any],
                inputs: Sequence[Any], *, repeats: int = 1,
                progress: bool = True) -> tuple[float, float]:
    """Median seconds per input of the two callables (``OnnxBackend``s) on the same
    ``inputs``, run alternately (so load from other jobs hits both alike) after one
    untimed run each."""
    from tqdm import tqdm
    if not inputs:
        raise QuantizeError("no images to time the models on")
    fp32(inputs[0]), int8(inputs[0])  # warm-up: allocations, kernel choice
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    with tqdm(total=len(inputs) * repeats, desc="timing fp32 and int8", unit="image",
              disable=not progress) as bar:
        for _ in range(repeats):
            for x in inputs:
                for name, model in (("fp32", fp32), ("int8", int8)):
                    tic = time.perf_counter()
                    model(x)
                    times[name].append(time.perf_counter() - tic)
                bar.update(1)
    return float(np.median(times["fp32"])), float(np.median(times["int8"]))


# ============================================================================ metadata

def int8_metadata(done: Mapping[str, Any], *, images: int, source: str, sha256: str,
                  sizes: Sequence[int], heldout: HeldOutResult | None, verified: bool,
                  thresholds: Mapping[str, Any], speed: Mapping[str, Any] | None
                  ) -> dict[str, str]:
    """The keys an int8 file adds to the fp32 file's metadata, every value a JSON
    string: ``precision`` ("int8"), ``int8_calibration`` (method, images, source,
    images_sha256, short sides, layers kept in fp32, reduce_range, onnxruntime
    version), ``int8_check`` (the held-out result and thresholds), ``int8_verified``
    (the check passed) and ``int8_speed`` (the timing on the machine that made it)."""
    import onnxruntime
    calibration = {"method": done["method"], "images": int(images), "source": source,
                   "images_sha256": sha256, "imgSizes": [int(s) for s in sizes],
                   "fp32_layers": done["fp32_layers"], "fp32_nodes": list(done["fp32_nodes"]),
                   "reduce_range": bool(done["reduce_range"]),
                   "format": "QDQ: int8 weights per output channel, uint8 activations",
                   "onnxruntime": onnxruntime.__version__}
    check = {**(heldout.to_json() if heldout is not None else {}), **dict(thresholds)}
    values = {"precision": "int8", "int8_calibration": calibration, "int8_check": check,
              "int8_verified": bool(verified), "int8_speed": dict(speed or {})}
    return {k: json.dumps(v) for k, v in values.items()}


def add_metadata(path: str, props: Mapping[str, str]) -> None:
    """Set the metadata entries ``props`` (JSON strings) in the ONNX file ``path``,
    replacing entries of the same key."""
    import onnx
    model = onnx.load(path)
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, path)
