"""The rules every config value must follow, checked once when a config is loaded.

``defaults.py`` says what each key means and its default; this module says which
values it may take: ranges, closed sets of choices, files that must exist, and
the few rules between keys. ``load_cfg`` runs ``check_config`` on every config it
returns; the entry points that accept a config built by hand (``training.main``,
``InferenceEngine.from_config``) run it too, and a value passed as a keyword
argument instead of a config key is checked with ``check_value``. Names that a
registry extends (architectures, optimizers, hooks) are checked where they are
looked up, with errors that list the registered names.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import MitSemsegError

__all__ = ["Rule", "RULES", "check_value", "check_config", "ConfigError", "ConfigValueError",
           "PRECISIONS",
           "INFERENCE_PRECISIONS", "STREAMS", "SAVE_FORMATS", "BACKENDS", "TRUST", "MODES",
           "CLASS_WEIGHT_RULES", "LABEL_FORMATS", "LR_SCHEDULES", "LAYER_DECAY_MODES",
           "AUGMENTS", "FEATURE_CACHE_DTYPES"]


class ConfigError(MitSemsegError, ValueError):
    """A config file or override names a key that does not exist or is malformed."""


class ConfigValueError(ConfigError):
    """A config value outside what its key allows (the message names the key)."""


# closed sets of choices (the components map them to what they do)
PRECISIONS = ("fp32", "bf16", "fp16")  # TRAIN.precision
INFERENCE_PRECISIONS = ("fp32", "bf16", "fp16", "int8")  # VAL/TEST.precision (int8: a quantized file)
STREAMS = ("resumable", "original")  # TRAIN.stream
SAVE_FORMATS = ("pth", "safetensors")  # TRAIN.save_format
BACKENDS = ("pytorch", "onnxruntime")  # VAL/TEST.backend
TRUST = ("config", "file")  # VAL/TEST.onnx_trust
MODES = ("whole", "slide")  # VAL/TEST.mode
CLASS_WEIGHT_RULES = ("median_frequency", "inverse", "inverse_sqrt")  # TRAIN.class_weight_rule
LABEL_FORMATS = ("ade20k", "zero_based", "rgb")  # DATASET.label_format
LR_SCHEDULES = ("poly", "cosine")  # TRAIN.lr_schedule
LAYER_DECAY_MODES = ("layer", "stage")  # TRAIN.layer_decay_mode
AUGMENTS = ("original", "mmseg")  # DATASET.augment
FEATURE_CACHE_DTYPES = ("float32", "float16")  # TRAIN.feature_cache_dtype


@dataclass(frozen=True)
class Rule:
    """What one key accepts. ``kind``: "int", "float", "choice", "sizes" (a positive
    int or a list of them), "pair" (two positive ints), "file" (empty, or an
    existing file). ``low``/``high``: inclusive bounds (``open_low``: strictly above
    ``low``). ``message``: the error's wording, formatted with ``key``, ``value``
    and ``choices``."""

    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    choices: tuple[str, ...] = ()
    message: str = ""


def _int(low: float, message: str = "") -> Rule:
    return Rule("int", low=low, message=message)


def _choice(choices: tuple[str, ...], message: str = "") -> Rule:
    return Rule("choice", choices=choices, message=message)


_SECTION = {
    "precision": _choice(INFERENCE_PRECISIONS),
    "backend": _choice(BACKENDS, "backend: unknown backend {value!r}; expected one of "
                                 "{choices_list}"),
    "onnx_trust": _choice(TRUST, "{key}: expected one of {choices_list}, got {value!r}"),
    "mode": _choice(MODES, "{key}: unknown inference mode {value!r}; expected one of "
                           "{choices_list}"),
    "crop_size": Rule("pair"),
    "stride": Rule("pair"),
    "slide_scale": Rule("float", low=0, open_low=True),
    "num_threads": _int(0, "{key} must be >= 0 (0 = PyTorch's default), got {value}"),
}

RULES: dict[str, Rule] = {
    "DATASET.num_class": _int(1),
    "DATASET.imgSizes": Rule("sizes"),
    "DATASET.imgMaxSize": _int(1),
    "DATASET.padding_constant": _int(1),
    "DATASET.segm_downsampling_rate": _int(1),
    "DATASET.label_format": _choice(LABEL_FORMATS, "DATASET.label_format {value!r} is not one "
                                                   "of {choices_list}"),
    "DATASET.augment": _choice(AUGMENTS),
    "DATASET.augment_scale": Rule("pair"),
    "DATASET.crop_size": Rule("pair"),
    "DATASET.cat_max_ratio": Rule("float", low=0, high=1, open_low=True),
    "MODEL.fc_dim": _int(1),
    "TRAIN.batch_size_per_gpu": _int(1),
    "TRAIN.num_epoch": _int(1),
    "TRAIN.epoch_iters": _int(1),
    "TRAIN.start_epoch": _int(0),
    "TRAIN.workers": _int(0),
    "TRAIN.checkpoint_every": _int(0),
    "TRAIN.precise_bn_iters": _int(0),
    "TRAIN.num_threads": _int(0),
    "TRAIN.eval_every": _int(0),
    "TRAIN.early_stop": _int(0),
    "TRAIN.disp_iter": _int(1),
    "TRAIN.lr_encoder": Rule("float", low=0),
    "TRAIN.lr_decoder": Rule("float", low=0),
    "TRAIN.lr_pow": Rule("float", low=0),
    "TRAIN.beta1": Rule("float", low=0, high=1),
    "TRAIN.weight_decay": Rule("float", low=0),
    "TRAIN.deep_sup_scale": Rule("float", low=0),
    "TRAIN.beta2": Rule("float", low=0, high=1),
    "TRAIN.layer_decay": Rule("float", low=0, high=1, open_low=True),
    "TRAIN.layer_decay_mode": _choice(LAYER_DECAY_MODES),
    "TRAIN.lr_schedule": _choice(LR_SCHEDULES),
    "TRAIN.warmup_iters": _int(0),
    "TRAIN.warmup_ratio": Rule("float", low=0, high=1),
    "TRAIN.ema_decay": Rule("float", low=0, high=1),
    "TRAIN.accumulate": _int(1),
    "TRAIN.ohem_thresh": Rule("float", low=0, high=1),
    "TRAIN.ohem_min_kept": _int(0),
    "TRAIN.focal_gamma": Rule("float", low=0),
    "TRAIN.dist_timeout": Rule("float", low=0, open_low=True),
    "TRAIN.peer_timeout": Rule("float", low=0, open_low=True),
    "TRAIN.precision": _choice(PRECISIONS),
    "TRAIN.stream": _choice(STREAMS),
    "TRAIN.save_format": _choice(SAVE_FORMATS, "{key} {value!r} is not one of "
                                               "{choices_comma}"),
    "TRAIN.feature_cache_dtype": _choice(FEATURE_CACHE_DTYPES),
    "TRAIN.class_weight_rule": Rule("choice", choices=("",) + CLASS_WEIGHT_RULES,
                                    message="{key} {value!r} is not one of {rules} (or \"\" for "
                                            "no weights)"),
    **{f"{s}.{k}": r for s in ("VAL", "TEST") for k, r in _SECTION.items()},
}


def _fail(key: str, rule: Rule, value: Any, default: str, where: str) -> ConfigValueError:
    text = (rule.message or default).format(
        key=key, value=value, choices_list=list(rule.choices),
        choices_comma=", ".join(rule.choices), rules=", ".join(CLASS_WEIGHT_RULES))
    return ConfigValueError(f"{where}: {text}" if where else text)


def check_value(key: str, value: Any, where: str = "") -> Any:
    """``value`` if key ``key`` allows it (a choice comes back lower-cased), else
    ``ConfigValueError`` naming the key (and ``where``: the file or overrides)."""
    rule = RULES.get(key)
    if rule is None:
        return value
    if rule.kind == "choice":
        text = str(value).strip().lower()
        if text not in rule.choices:
            raise _fail(key, rule, value, "{key} {value!r} is not one of {choices_list}", where)
        return text
    if rule.kind == "file":
        if value and not os.path.isfile(str(value)):
            raise _fail(key, rule, value, "{key}: file not found: {value}", where)
        return value
    if rule.kind == "sizes":
        sizes = value if isinstance(value, (list, tuple)) else (value,)
        if not sizes or any(not _is_int(s) or int(s) < 1 for s in sizes):
            raise _fail(key, rule, value, "{key} must be a positive size or a list of them, "
                                          "got {value!r}", where)
        return value
    if rule.kind == "pair":
        if not isinstance(value, (list, tuple)) or len(value) != 2 or \
                any(not _is_int(v) or int(v) < 1 for v in value):
            raise _fail(key, rule, value, "{key} must be two positive integers [height, "
                                          "width], got {value!r}", where)
        return value
    number = _number(value, rule.kind == "int")
    if number is None:
        kind = "an integer" if rule.kind == "int" else "a number"
        raise _fail(key, rule, value, f"{{key}} must be {kind}, got {{value!r}}", where)
    low, high = rule.low, rule.high
    if low is not None and (number < low or (rule.open_low and number == low)):
        sign = ">" if rule.open_low else ">="
        raise _fail(key, rule, value, f"{{key}} must be {sign} {_fmt(low)}, got {{value}}", where)
    if high is not None and number > high:
        raise _fail(key, rule, value, f"{{key}} must be <= {_fmt(high)}, got {{value}}", where)
    return value


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any, integer: bool) -> float | None:
    if isinstance(value, bool):
        return None
    if integer:
        return float(value) if isinstance(value, int) else None
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


def _get(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        if part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def _cross_rules(cfg: Any) -> list[str]:
    """Rules between keys; messages of what is wrong."""
    problems = []
    t = cfg.TRAIN
    if int(t.early_stop) > 0 and int(t.eval_every) == 0:
        problems.append(f"TRAIN.early_stop {t.early_stop} counts validations, but TRAIN."
                        f"eval_every is 0 (no validation): set TRAIN.eval_every 1 (or N)")
    given, rule = list(t.class_weights), str(t.class_weight_rule)
    if given and rule:
        problems.append(f"TRAIN.class_weights and TRAIN.class_weight_rule '{rule}' are both "
                        f"set; keep one of them")
    elif given:
        num_class = int(cfg.DATASET.num_class)
        if len(given) != num_class:
            problems.append(f"TRAIN.class_weights has {len(given)} numbers but "
                            f"DATASET.num_class is {num_class}: give one weight per class, in "
                            f"class order")
        else:
            bad = [w for w in given if isinstance(w, bool) or not isinstance(w, (int, float))
                   or not math.isfinite(w) or w < 0]
            if bad or not any(given):
                problems.append(f"TRAIN.class_weights must be finite numbers >= 0, not all 0; "
                                f"got {bad[0] if bad else 'all 0'}")
    if int(t.get("accumulate", 1)) > 1 and str(t.stream).lower() == "original":
        problems.append(f"TRAIN.accumulate {t.accumulate} needs TRAIN.stream resumable: the "
                        f"original stream replays the original's one batch per iteration")
    if str(cfg.DATASET.get("augment", "original")).lower() != "original" and \
            str(t.stream).lower() == "original":
        problems.append(f"DATASET.augment {cfg.DATASET.augment} needs TRAIN.stream resumable: "
                        f"the original stream replays the original's augmentation")
    if float(t.get("ema_decay", 0.0)) >= 1.0:
        problems.append("TRAIN.ema_decay must be below 1 (1 would never move the average; "
                        "0 = off)")
    ratio = cfg.DATASET.get("augment_ratio", (0.5, 2.0))
    if not isinstance(ratio, (list, tuple)) or len(ratio) != 2 or \
            any(isinstance(r, bool) or not isinstance(r, (int, float)) for r in ratio) or \
            not 0 < float(ratio[0]) <= float(ratio[1]):
        problems.append(f"DATASET.augment_ratio must be two numbers 0 < low <= high, got "
                        f"{ratio!r}")
    if str(t.get("feature_cache", "")) and not bool(cfg.MODEL.get("freeze_encoder", False)):
        problems.append(f"TRAIN.feature_cache '{t.feature_cache}' caches the encoder's "
                        f"features, which must not change while training: set "
                        f"MODEL.freeze_encoder True (or TRAIN.feature_cache \"\")")
    augment = str(cfg.DATASET.get("augment", "original"))
    if str(t.get("feature_cache", "")) and augment != "original":
        problems.append(f"TRAIN.feature_cache caches a fixed set of views (DATASET.imgSizes x "
                        f"flip); DATASET.augment '{augment}' draws new crops every step: use "
                        f"DATASET.augment original with the cache")
    for section in ("VAL", "TEST"):
        node = cfg[section]
        if str(node.mode).lower() == "slide":
            crop, stride = list(node.crop_size), list(node.stride)
            if any(int(s) > int(c) for s, c in zip(stride, crop)):
                problems.append(f"{section}: stride {tuple(stride)} larger than crop_size "
                                f"{tuple(crop)}: pixels between tiles would get no scores")
    return problems


def check_config(cfg: Any, where: str = "",
                 sections: Sequence[str] | None = None) -> None:
    """Check every key of ``cfg`` that has a rule (only those under ``sections`` when
    given) and the rules between keys; the first problem raises
    ``ConfigValueError`` naming the key and ``where`` it came from."""
    for key in RULES:
        if sections is not None and key.split(".", 1)[0] not in sections:
            continue
        value = _get(cfg, key)
        if value is not _MISSING:
            check_value(key, value, where)
    problems = _cross_rules(cfg)
    if problems:
        raise ConfigValueError(f"{where}: {problems[0]}" if where else problems[0])

