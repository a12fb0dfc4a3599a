"""The Python API: ``Segmenter`` segments photos with a trained model, and names
and colours what it finds.

>>> seg = Segmenter.from_config("config/ade20k-resnet50dilated-ppm_deepsup.yaml",
...                             checkpoint_dir="ckpt/ade20k-resnet50dilated-ppm_deepsup")
>>> labels = seg("photo.jpg")
"""
from __future__ import annotations

import os
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
from PIL import Image

from ..config import load_cfg
from ..data.classes import class_colors, class_names, colorEncode
from ..data.io import read_image
from ..data.labelmap import class_shares, label_map_image, write_class_shares
from .engine import DEFAULT_BAND_BYTES, InferenceEngine, Progress
from .slide import SlideWindow

__all__ = ["Segmenter", "ClassShare", "describe_labels"]


class ClassShare(NamedTuple):
    """One line of ``Segmenter.describe``: class index, name and share of pixels (%)."""
    index: int
    name: str
    percent: float


# the inference options of from_config / from_pretrained
_OPTIONS = {"device", "flip", "precision", "band_bytes", "exact", "backend", "onnx_path", "slide"}

ImageInput = Any  # path (str / os.PathLike), PIL.Image.Image, or H x W x 3 uint8 numpy array


class Segmenter:
    """Segment photos with a trained model.

    >>> seg = Segmenter.from_config("config/ade20k-resnet50dilated-ppm_deepsup.yaml",
    ...                             checkpoint_dir="ckpt/ade20k-resnet50dilated-ppm_deepsup")
    >>> labels = seg("photo.jpg")                  # H x W int64, 0-based classes
    >>> for share in seg.describe(labels): print(share.name, share.percent)

    Paths are read as test.py reads them (EXIF orientation applied, any mode
    converted to RGB). PIL images and arrays are used as given (no EXIF
    rotation), so the labels line up with their pixels.
    """

    def __init__(self, engine: InferenceEngine, dataset_opt: Any,
                 names: Mapping[int, str] | None = None,
                 colors: np.ndarray | None = None) -> None:
        """Wrap ``engine`` (built with ``InferenceEngine.from_config``; its mode,
        backend and precision are used as they are); ``dataset_opt``: the config's
        DATASET section (class table); ``names`` / ``colors`` override it."""
        self.engine = engine
        # DATASET.class_table (via dataset_opt) when it describes this model's classes
        table = dataset_opt if getattr(dataset_opt, "num_class", None) == engine.num_class \
            else engine.num_class
        if engine.classes is not None:  # the model file's own (onnx_trust file)
            names = engine.classes.name_dict() if names is None else names
            colors = engine.classes.colors if colors is None else colors
        self.names = dict(names) if names is not None else class_names(table)
        self.colors = np.asarray(colors) if colors is not None else class_colors(table)

    @classmethod
    def from_config(cls, config: Any, *, checkpoint_dir: str | None = None,
                    checkpoint: str | None = None, encoder_weights: str | None = None,
                    decoder_weights: str | None = None, device: str | int | None = "auto",
                    opts: Sequence[str] = (), flip: bool | None = None,
                    precision: str | None = None, band_bytes: int = DEFAULT_BAND_BYTES,
                    exact: bool | None = None, backend: str | None = None,
                    onnx_path: str | None = None, slide: Any = None) -> "Segmenter":
        """Build from a YAML path (or a loaded cfg). Weights: ``encoder_weights`` and
        ``decoder_weights`` if given, else ``<checkpoint_dir or cfg.DIR>/{encoder,decoder}_
        <checkpoint or cfg.TEST.checkpoint>``. ``flip``/``precision``/``exact`` default
        to cfg.TEST.flip / cfg.TEST.precision / cfg.TEST.exact. ``backend`` ("pytorch" |
        "onnxruntime") and ``onnx_path`` default to cfg.TEST.backend / cfg.TEST.onnx (with
        onnxruntime no weights are read). ``slide``: a ``slide.SlideWindow``, False for
        whole-image inference, or None for cfg.TEST.mode / crop_size / stride / slide_scale."""
        cfg = load_cfg(config, opts) if isinstance(config, (str, os.PathLike)) else config
        if (encoder_weights is None) != (decoder_weights is None):
            raise ValueError("give both encoder_weights and decoder_weights, or neither")
        weights = None if encoder_weights is None else (encoder_weights, decoder_weights)
        return cls._build(cfg, device, dict(checkpoint_dir=checkpoint_dir, checkpoint=checkpoint,
                                            weights=weights),
                          flip=flip, precision=precision, band_bytes=band_bytes, exact=exact,
                          backend=backend, onnx_path=onnx_path, slide=slide)

    @classmethod
    def _build(cls, cfg: Any, device: Any, model: dict[str, Any], *, slide: Any = None,
               band_bytes: int = DEFAULT_BAND_BYTES, **options: Any) -> "Segmenter":
        overrides: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
        overrides["band_bytes"] = band_bytes
        if slide is not None:
            overrides["window"] = slide or None
        engine = InferenceEngine.from_config(cfg, "TEST", device, **model, **overrides)
        seg = cls(engine, cfg.DATASET)
        seg._source = (cfg, model.get("weights"), model.get("checkpoint_dir"),
                       model.get("checkpoint"))
        return seg

    @classmethod
    def from_pretrained(cls, model: str, *, config: Any = None, opts: Sequence[str] = (),
                        revision: str | None = None, cache_dir: str | None = None,
                        local_files_only: bool | None = None,
                        **options: Any) -> "Segmenter":
        """Build from a model folder (``save_pretrained``) or a Hugging Face Hub repo id
        (downloaded into the Hub cache; needs the ``[hub]`` extra; ``HF_HUB_OFFLINE=1``
        or ``local_files_only`` reads the cache only). ``config``: run with this config
        instead of the folder's (same architecture and classes); ``opts``: overrides;
        ``options``: as :meth:`from_config` (device, flip, precision, slide, ...).
        A config or weights that do not match the folder raise ModelFolderError."""
        from ..models.weights import WeightsError
        from ..models.folder import open_pretrained
        opened = open_pretrained(model, config=config, opts=opts, revision=revision,
                                 cache_dir=cache_dir, local_files_only=local_files_only)
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise TypeError(f"unknown option(s) {unknown}; expected some of {sorted(_OPTIONS)}")
        device = options.pop("device", "auto")
        try:
            return cls._build(opened.cfg, device,
                              dict(weights=(opened.encoder, opened.decoder)), **options)
        except WeightsError as exc:
            raise opened.mismatch(exc) from None

    def save_pretrained(self, folder: str, *, evaluation: Any = None,
                        name: str | None = None) -> str:
        """Write this model as a model folder (see ``models.folder.save_pretrained``:
        safetensors weights, config, class table, preprocessing, model card);
        returns ``folder``. Only for a Segmenter built from a config or folder with
        PyTorch weights."""
        from ..models.folder import save_pretrained
        source = getattr(self, "_source", None)
        if source is None or self.engine.encoder is None:
            raise ValueError("save_pretrained needs a Segmenter made by from_config or "
                             "from_pretrained with PyTorch weights")
        cfg, weights, checkpoint_dir, checkpoint = source
        enc, dec = weights if weights is not None else (None, None)
        return save_pretrained(folder, cfg, encoder_weights=enc, decoder_weights=dec,
                               checkpoint_dir=checkpoint_dir, checkpoint=checkpoint,
                               evaluation=evaluation, name=name)

    def push_to_hub(self, repo_id: str, *, evaluation: Any = None, private: bool | None = None,
                    token: str | None = None) -> str:
        """Save this model as a model folder (a temporary one) and upload it to Hub repo
        ``repo_id`` (needs the ``[hub]`` extra); returns the commit URL."""
        import tempfile

        from ..checkpoints.hub import push_to_hub
        with tempfile.TemporaryDirectory(prefix="mit_semseg_push_") as tmp:
            folder = self.save_pretrained(os.path.join(tmp, repo_id.rsplit("/", 1)[-1]),
                                          evaluation=evaluation)
            return push_to_hub(folder, repo_id, private=private, token=token)

    # ---------------------------------------------------------------- inputs
    @property
    def slide(self) -> SlideWindow | None:
        """The sliding window of the engine (None: whole-image mode); settable."""
        return self.engine.window

    @slide.setter
    def slide(self, window: SlideWindow | None) -> None:
        self.engine.window = window

    def _to_pil(self, image: ImageInput) -> Image.Image:
        if isinstance(image, (str, os.PathLike)):
            return read_image(os.fspath(image), exif_transpose=True)
        if isinstance(image, Image.Image):
            if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
                arr = np.asarray(image, dtype=np.float64)
                image = Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8))
            return image.convert("RGB") if image.mode != "RGB" else image
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8:
                raise TypeError(f"numpy images must be uint8, got {image.dtype}")
            if image.ndim == 2:
                image = np.stack([image] * 3, axis=-1)
            if image.ndim != 3 or image.shape[2] not in (3, 4):
                raise ValueError(f"numpy images must be H x W x 3 (RGB), got shape {image.shape}")
            return Image.fromarray(np.ascontiguousarray(image[:, :, :3]), mode="RGB")
        raise TypeError(f"expected a path, PIL image or numpy array, got {type(image).__name__}")

    # ---------------------------------------------------------------- predict
    def predict(self, image: ImageInput, return_probs: bool = False, *,
                imgSizes: Sequence[int] | None = None, flip: bool | None = None,
                return_confidence: bool = False, progress: Progress | None = None):
        """Labels (H x W int64 numpy), in every mode, backend and precision.

        ``return_probs``: also the averaged class probabilities, a [C, H, W] float32
        CPU tensor (4 x C x H x W bytes: 184 MB for 150 classes at 640x480, 7 GB at
        12 MP), summing to 1 over classes, argmax = the labels.
        ``return_confidence``: also each pixel's probability of its label, H x W
        float32 numpy (in whole-image mode computed without a C x H x W buffer; in
        sliding-window mode for now only together with ``return_probs``).
        Returns ``labels``, ``(labels, probs)``, ``(labels, confidence)`` or
        ``(labels, probs, confidence)``. ``imgSizes`` (short sides, e.g. ``[450]``
        for single scale) and ``flip`` override the configured ones for this call.
        ``progress(done, total)``: called as the steps (network runs, tiles) finish.
        """
        pred = self.engine.predict_image(self._to_pil(image), return_probs, sizes=imgSizes,
                                         flip=flip, return_confidence=return_confidence,
                                         progress=progress)
        out = (pred.labels,) + ((pred.probs,) if return_probs else ()) \
            + ((pred.confidence,) if return_confidence else ())
        return out if len(out) > 1 else out[0]

    def __call__(self, image: ImageInput) -> np.ndarray:
        return self.predict(image)

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 colour image of ``labels`` (the class table's colours;
        ADE20K's for 150 classes without one)."""
        return colorEncode(labels, self.colors).astype(np.uint8)

    def label_map(self, labels: np.ndarray, path: str | os.PathLike | None = None, *,
                  convention: str = "ade20k", ignore_label: int = 255) -> Image.Image:
        """The label map of ``labels`` (H x W, 0-based) as a PIL image other tools read:
        value k + 1 per pixel for class k in the ``ade20k`` convention, k in
        ``zero_based``; 8-bit indexed with this model's class colours as the palette
        up to 255 classes, 16-bit grayscale above (see ``data.labelmap``). With
        ``path`` it is also written there as PNG, and beside it ``<path stem>.json``:
        the classes present with their pixel shares and colours."""
        num_class = self.engine.num_class
        img = label_map_image(labels, num_class, self.colors, convention=convention,
                              ignore_label=ignore_label)
        if path is not None:
            path = os.fspath(path)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            img.save(path, format="PNG", compress_level=1)
            write_class_shares(os.path.splitext(path)[0] + ".json",
                               class_shares(labels, self.names, self.colors,
                                            convention=convention, ignore_label=ignore_label))
        return img

    def describe(self, labels: np.ndarray, min_percent: float = 0.0) -> list[ClassShare]:
        """Classes present in ``labels`` with their share of pixels, largest first;
        shares at or below ``min_percent`` are left out."""
        return describe_labels(labels, self.names, min_percent)


def describe_labels(labels: np.ndarray, names: Mapping[int, str],
                    min_percent: float = 0.0) -> list[ClassShare]:
    """Class shares of ``labels`` (largest first, ties by class index), above ``min_percent``."""
    labels = np.asarray(labels)
    values, counts = np.unique(labels, return_counts=True)
    order = np.lexsort((values, -counts))
    out = []
    for i in order:
        pct = counts[i] / max(labels.size, 1) * 100
        if pct > min_percent:
            k = int(values[i])
            out.append(ClassShare(k, names.get(k, f"class_{k}"), float(pct)))
    return out

