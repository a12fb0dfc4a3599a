"""YACS configuration: ``from mit_semseg.config import cfg``.

``cfg`` is the tree of defaults (see defaults.py). ``load_cfg`` returns a copy
merged with a YAML file and ``KEY VALUE`` overrides, with errors that name the
offending key and where it came from.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import yaml
from yacs.config import CfgNode

from .defaults import _C as cfg
from .schema import ConfigError, ConfigValueError, check_config, check_value

__all__ = ["cfg", "load_cfg", "ConfigError", "ConfigValueError", "check_config",
           "check_value"]


def load_cfg(cfg_file: str | None = None, opts: Sequence[str] = ()) -> CfgNode:
    """Return a clone of the defaults merged with ``cfg_file`` then ``opts``, every
    value checked against its rule (``schema.check_config``)."""
    out = cfg.clone()
    if cfg_file:
        if not os.path.isfile(cfg_file):
            raise ConfigError(f"config file not found: {cfg_file}")
        _warn_replaced_keys(_file_keys(cfg_file), cfg_file)
        try:
            out.merge_from_file(cfg_file)
        except (KeyError, AssertionError, ValueError) as exc:
            raise ConfigError(f"{cfg_file}: {_reason(exc)}") from None
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(f"overrides must be KEY VALUE pairs; '{opts[-1]}' has no value")
    _warn_replaced_keys(opts[0::2], "command line")
    opts = _add_open_keys(out, opts)
    try:
        out.merge_from_list(opts)
    except (KeyError, AssertionError, ValueError) as exc:
        raise ConfigError(f"command-line override: {_reason(exc)}") from None
    where = " + ".join(p for p in (cfg_file or "", "overrides" if opts else "") if p)
    check_config(out, where)
    return out


# keys of earlier versions of this project -> what replaces them
_REPLACED = {
    "TRAIN.fast": "TRAIN.exact", "TRAIN.channels_last": "TRAIN.exact",
    "VAL.fast": "VAL.exact", "TEST.fast": "TEST.exact",
}
for _key in _REPLACED:
    cfg.register_deprecated_key(_key)


def _add_open_keys(out: CfgNode, opts: list[str]) -> list[str]:
    """Merge the overrides that add a key to a node accepting new keys (such as
    ``MODEL.encoder_options``, which ``merge_from_list`` refuses); return the rest.
    Values are read as YAML (``0.3`` a number, ``True`` a bool)."""
    rest: list[str] = []
    for key, value in zip(opts[0::2], opts[1::2]):
        node, parts = out, str(key).split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, CfgNode) else None
        if isinstance(node, CfgNode) and node.is_new_allowed() and parts[-1] not in node:
            tree: Any = {parts[-1]: yaml.safe_load(str(value))}
            for part in reversed(parts[:-1]):
                tree = {part: tree}
            out.merge_from_other_cfg(CfgNode(tree))
        else:
            rest += [key, value]
    return rest


def _file_keys(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            tree = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return []  # merge_from_file reports it

    def walk(node: Any, prefix: str) -> list[str]:
        if not isinstance(node, dict):
            return [prefix]
        return [k for key, v in node.items() for k in walk(v, f"{prefix}{key}.")]

    return [k.rstrip(".") for k in walk(tree, "")] if isinstance(tree, dict) else []


def _warn_replaced_keys(keys: Sequence[str], where: str) -> None:
    for key in keys:
        if key in _REPLACED:
            warnings.warn(f"{where}: {key} is ignored: the fast path it switched on is the "
                          f"default now; set {_REPLACED[key]} True for the original's exact "
                          f"operations", FutureWarning, stacklevel=3)


def _reason(exc: Exception) -> str:
    msg = exc.args[0] if exc.args else str(exc)
    if "Non-existent" in str(msg):
        key = str(msg).rsplit(":", 1)[-1].strip()
        return f"unknown config key '{key}' (see mit_semseg/config/defaults.py for the valid keys)"
    return str(msg)
