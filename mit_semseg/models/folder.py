"""One folder = one model: what ``save_pretrained`` writes and ``from_pretrained`` reads.

A model folder (also a Hugging Face Hub repo) holds::

    encoder.safetensors   encoder weights (a flat state dict)
    decoder.safetensors   decoder weights
    config.yaml           the whole config (DIR "."; class_table "classes.csv" if
                          the model has its own class table)
    classes.csv           the class table: Idx,Name,R,G,B
    preprocessing.json    the resize and normalisation rule, for other runtimes
    evaluation.json       the evaluation results (eval.py's JSON), when given
    README.md             the model card: metrics table and how to run it
    SHA256SUMS            hashes of the weight files, checked on every load

``config.yaml`` is what the model is built from; ``preprocessing.json`` only
records the rule for code that does not read YAML configs. With ``DIR`` set to
the folder, test.py, eval.py, the web demo and export read it as they read a
run folder (``checkpoints.files.checkpoint_paths``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from yacs.config import CfgNode

from ..checkpoints.files import (MODEL_CONFIG, MODEL_WEIGHTS, atomic_write_text, checkpoint_paths,
                                 is_model_folder)
from ..checkpoints.formats import write_weights
from ..checkpoints.hub import check_model_folder, resolve_model
from ..checkpoints.ledger import SUMS_NAME, record_sha256, sha256_file
from ..config import load_cfg
from ..data.classes import class_table, write_class_table
from ..data.transforms import Preprocess
from ..errors import MitSemsegError
from .parts import parts_from_config
from .weights import WeightsError, load_weights, read_state_dict

__all__ = ["ModelFolderError", "PretrainedFolder", "CLASSES_FILE", "PREPROCESSING_FILE",
           "EVALUATION_FILE", "CARD_FILE", "save_pretrained", "open_pretrained"]

CLASSES_FILE = "classes.csv"
PREPROCESSING_FILE = "preprocessing.json"
EVALUATION_FILE = "evaluation.json"
CARD_FILE = "README.md"
# Keys that decide the shapes of the weights: a config must agree with the folder on them.
_MODEL_KEYS = ("MODEL.arch_encoder", "MODEL.arch_decoder", "MODEL.fc_dim", "DATASET.num_class")


class ModelFolderError(MitSemsegError, ValueError):
    """A model folder and a config (or its weights) do not belong together; the
    message names both."""


# ============================================================================ writing

def save_pretrained(folder: str, config: Any, *, encoder_weights: Any = None,
                    decoder_weights: Any = None, checkpoint_dir: str | None = None,
                    checkpoint: str | None = None, opts: Sequence[str] = (),
                    evaluation: str | Mapping[str, Any] | None = None,
                    name: str | None = None) -> str:
    """Write the model of ``config`` (a YAML path or a loaded cfg, plus ``opts``) as a
    model folder ``folder``; returns ``folder``.

    Weights: ``encoder_weights`` and ``decoder_weights`` (files or state dicts) if
    given, else those of ``checkpoint_dir`` (default ``DIR``) for ``checkpoint``
    (default ``TEST.checkpoint``), either format. They are loaded strictly into the model the
    config describes first (ModelFolderError naming both when they do not fit) and
    written unchanged (same keys, order and bits). ``evaluation``: eval.py's JSON
    (a path or the record) for the metrics table. ``name``: the model card's title
    (default: the folder's name). ``folder`` must be new, empty or a model folder
    (then it is overwritten).
    """
    cfg = load_cfg(config, opts) if isinstance(config, (str, os.PathLike)) else config.clone()
    if (encoder_weights is None) != (decoder_weights is None):
        raise ValueError("give both encoder_weights and decoder_weights, or neither")
    if encoder_weights is None:
        encoder_weights, decoder_weights = checkpoint_paths(checkpoint_dir or cfg.DIR,
                                                            checkpoint or cfg.TEST.checkpoint)
    states = {"encoder": _state(encoder_weights), "decoder": _state(decoder_weights)}
    _check_weights_fit(cfg, states, (_name(encoder_weights, "encoder"),
                                     _name(decoder_weights, "decoder")),
                       config if isinstance(config, (str, os.PathLike)) else "the config")
    record = _evaluation_record(evaluation)
    if os.path.isdir(folder) and os.listdir(folder) and not is_model_folder(folder):
        raise ModelFolderError(f"{folder} exists and is not a model folder; save into a new or "
                               f"empty folder")
    os.makedirs(folder, exist_ok=True)

    for part, state in states.items():
        path = os.path.join(folder, MODEL_WEIGHTS[part])
        write_weights(state, path)
        record_sha256(folder, MODEL_WEIGHTS[part], sha256_file(path))
    table = class_table(cfg)
    own_table = table.source not in ("", "ADE20K")  # else the defaults: ADE20K's or class_k
    write_class_table(os.path.join(folder, CLASSES_FILE), table.names, table.colors)
    atomic_write_text(_folder_config(cfg, own_table).dump(), os.path.join(folder, MODEL_CONFIG))
    preprocessing = {"num_class": int(cfg.DATASET.num_class),
                     **Preprocess.from_config(cfg.DATASET).metadata()}
    atomic_write_text(json.dumps(preprocessing, indent=2) + "\n",
                      os.path.join(folder, PREPROCESSING_FILE))
    eval_path = os.path.join(folder, EVALUATION_FILE)
    if record is not None:
        atomic_write_text(json.dumps(record, indent=2) + "\n", eval_path)
    elif os.path.isfile(eval_path):  # left by an earlier save of another model
        os.remove(eval_path)
    title = name or os.path.basename(os.path.normpath(os.path.abspath(folder)))
    atomic_write_text(model_card(cfg, title, record, table.names, own_table),
                      os.path.join(folder, CARD_FILE))
    return folder


def _state(weights: Any) -> Mapping:
    return weights if isinstance(weights, Mapping) else read_state_dict(weights)


def _name(weights: Any, part: str) -> str:
    return f"(the network's {part})" if isinstance(weights, Mapping) else str(weights)


def _folder_config(cfg: CfgNode, own_table: bool) -> CfgNode:
    """The config as stored in a folder: paths that only meant something where it was
    trained point into the folder instead (a class table relative to it, or none for
    the default tables)."""
    out = cfg.clone()
    out.defrost()
    out.DIR = "."
    out.DATASET.class_table = CLASSES_FILE if own_table else ""
    out.MODEL.weights_encoder = ""
    out.MODEL.weights_decoder = ""
    out.MODEL.pretrained = False
    return out


def _check_weights_fit(cfg: CfgNode, states: Mapping[str, Mapping], paths: Sequence[str],
                       config_name: Any) -> None:
    encoder, decoder = parts_from_config(cfg)
    try:
        load_weights(encoder, states["encoder"], f"encoder weights {paths[0]}")
        load_weights(decoder, states["decoder"], f"decoder weights {paths[1]}")
    except WeightsError as exc:
        raise ModelFolderError(f"the weights do not fit {config_name} "
                               f"({_describe(cfg)}): {exc}") from None


def _evaluation_record(evaluation: str | Mapping[str, Any] | None) -> dict | None:
    if evaluation is None or isinstance(evaluation, Mapping):
        return None if evaluation is None else dict(evaluation)
    try:
        with open(evaluation, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"cannot read the evaluation JSON {evaluation}: {exc}") from None
    if not isinstance(record, dict):
        raise ModelFolderError(f"{evaluation} is not an evaluation record (eval.py's JSON)")
    return record


# ============================================================================ the card

_METRICS = (("mean_iou", "Mean IoU", True), ("pixel_accuracy", "Pixel accuracy", True),
            ("mean_class_accuracy", "Mean class accuracy", True),
            ("frequency_weighted_iou", "Frequency-weighted IoU", True),
            ("mean_f1", "Mean F1 (Dice)", True), ("num_images", "Images", False))


def model_card(cfg: CfgNode, title: str, evaluation: Mapping[str, Any] | None,
               names: Sequence[str], own_table: bool = False) -> str:
    """The README.md of a model folder: Hub metadata, what the model is, its
    metrics (from ``evaluation``) and how to run it (``own_table``: the command lines
    name the folder's classes.csv)."""
    num_class = int(cfg.DATASET.num_class)
    tags = ["semantic-segmentation", "mit_semseg", cfg.MODEL.arch_encoder.lower(),
            cfg.MODEL.arch_decoder.lower()]
    lines = ["---", "library_name: mit_semseg", "pipeline_tag: image-segmentation", "tags:",
             *[f"- {t}" for t in tags], "---", "", f"# {title}", "",
             f"Semantic segmentation with {cfg.MODEL.arch_encoder} (encoder) + "
             f"{cfg.MODEL.arch_decoder} (decoder), {num_class} classes, for mit_semseg "
             f"(a re-implementation of MIT CSAIL's semantic segmentation toolkit for "
             f"ADE20K).", "", "## Results", ""]
    if evaluation:
        lines += ["| Metric | Value |", "|---|---|"]
        for key, label, percent in _METRICS:
            value = evaluation.get(key)
            if isinstance(value, (int, float)):
                lines.append(f"| {label} | {value * 100:.2f}% |" if percent else
                             f"| {label} | {value} |")
        setting = [f"{k}: {evaluation[k]}" for k in ("list_val", "imgSizes", "flip", "mode")
                   if k in evaluation]
        if setting:
            lines += ["", f"Evaluated with {', '.join(setting)} ({EVALUATION_FILE} has every "
                          f"number, per class too)."]
    else:
        lines.append(f"No evaluation was saved with this model. Measure it with `python eval.py "
                     f"--cfg config.yaml DIR .` on your validation list and save it again "
                     f"with `--eval DIR/eval_<checkpoint>.json`.")
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    table = f" DATASET.class_table MODEL/{CLASSES_FILE}" if own_table else ""
    sizes = ", ".join(str(s) for s in Preprocess.from_config(cfg.DATASET).img_sizes)
    lines += [
        "", "## How to run it", "", "```python",
        "from mit_semseg.inference import Segmenter", "",
        f'seg = Segmenter.from_pretrained("<this folder or owner/{title}>")',
        'labels = seg("photo.jpg")          # H x W array of 0-based classes',
        "for share in seg.describe(labels):",
        '    print(share.name, f"{share.percent:.1f}%")', "```", "",
        "From the command line, with this folder (MODEL) as `DIR`:", "", "```bash",
        f"python test.py --imgs photo.jpg --cfg MODEL/config.yaml DIR MODEL{table} "
        f"TEST.result out/",
        f"python eval.py --cfg MODEL/config.yaml DIR MODEL{table} DATASET.list_val val.odgt",
        "```", "",
        f"A Hub repo id works too (`pip install -e \".[hub]\"`; `HF_HUB_OFFLINE=1` uses the "
        f"local cache only). See docs/models.md of mit_semseg.", "",
        "## Preprocessing", "",
        f"RGB, scaled to [0, 1], normalised with the ImageNet mean and std; one copy per "
        f"short side ({sizes}) with the long side at most {int(cfg.DATASET.imgMaxSize)}, "
        f"padded to a multiple of {int(cfg.DATASET.padding_constant)}; the class "
        f"probabilities of the copies are averaged ({PREPROCESSING_FILE}).", "",
        "## Classes", "", f"{num_class} classes ({CLASSES_FILE}): {shown}.", "",
        "## Files", "",
        f"`{MODEL_WEIGHTS['encoder']}`, `{MODEL_WEIGHTS['decoder']}` (weights; SHA-256 in "
        f"`{SUMS_NAME}`, checked on every load), `{MODEL_CONFIG}`, `{CLASSES_FILE}`, "
        f"`{PREPROCESSING_FILE}`" + (f", `{EVALUATION_FILE}`" if evaluation else "") + ".", ""]
    return "\n".join(lines)


# ============================================================================ reading

@dataclass
class PretrainedFolder:
    """A model folder opened for use: ``cfg`` (DIR and the class table pointing into
    ``folder``) and the two weight files."""
    folder: str
    cfg: CfgNode
    encoder: str
    decoder: str
    config_name: str

    def mismatch(self, exc: Exception) -> ModelFolderError:
        """The error to raise when the weights do not load into ``cfg``'s model."""
        return ModelFolderError(f"the weights of model folder {self.folder} do not match "
                                f"{self.config_name} ({_describe(self.cfg)}): {exc}")


def open_pretrained(model: str, *, config: Any = None, opts: Sequence[str] = (),
                    revision: str | None = None, cache_dir: str | None = None,
                    local_files_only: bool | None = None) -> PretrainedFolder:
    """Open model folder or Hub repo ``model`` (see ``checkpoints.hub.resolve_model``).

    The config is the folder's ``config.yaml``, or ``config`` (a YAML path or cfg) to
    run the model with other settings, with ``opts`` on top; it must agree with the
    folder on the architecture and class count (ModelFolderError naming both).
    """
    folder = resolve_model(model, revision=revision, cache_dir=cache_dir,
                           local_files_only=local_files_only)
    check_model_folder(folder)
    own_path = os.path.join(folder, MODEL_CONFIG)
    own = load_cfg(own_path)
    if config is None:
        cfg, name = load_cfg(own_path, opts), own_path
    elif isinstance(config, (str, os.PathLike)):
        cfg, name = load_cfg(config, opts), os.fspath(config)
    else:
        cfg, name = config.clone(), "the given config"
        if opts:
            cfg.merge_from_list(list(opts))
    if opts:
        name += f" with overrides {' '.join(map(str, opts))}"
    differ = [key for key in _MODEL_KEYS
              if str(_get(own, key)).lower() != str(_get(cfg, key)).lower()]
    if differ:
        raise ModelFolderError(
            f"model folder {folder} holds a model with "
            f"{', '.join(f'{k} {_get(own, k)}' for k in differ)} ({own_path}), but {name} asks "
            f"for {', '.join(f'{k} {_get(cfg, k)}' for k in differ)}; run it with a config "
            f"that keeps those keys (fine-tune for other classes with MODEL.reinit_classifier)")
    cfg.defrost()
    cfg.DIR = folder
    table = str(cfg.DATASET.class_table or "")
    if not table or (table == CLASSES_FILE and not os.path.isfile(table)):
        cfg.DATASET.class_table = os.path.join(folder, CLASSES_FILE)
    enc, dec = (os.path.join(folder, MODEL_WEIGHTS[p]) for p in ("encoder", "decoder"))
    return PretrainedFolder(folder, cfg, enc, dec, name)


def _get(cfg: CfgNode, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _describe(cfg: CfgNode) -> str:
    return ", ".join(f"{key} {_get(cfg, key)}" for key in _MODEL_KEYS)
