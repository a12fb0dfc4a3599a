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
    try:
        out.merge_from_list(_merge_new_keys(out, opts))
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


def _merge_new_keys(node: CfgNode, opts: Sequence[str]) -> list[str]:
    """Merge the overrides that add a key to a section that allows new keys
    (``MODEL.encoder_options.drop_path_rate 0.2``; YACS' ``merge_from_list`` only
    replaces existing keys) into ``node``; return the other overrides."""
    rest: list[str] = []
    for key, value in zip(opts[0::2], opts[1::2]):
        *path, leaf = str(key).split(".")
        parent: Any = node
        for part in path:
            parent = parent.get(part) if isinstance(parent, CfgNode) else None
        if path and isinstance(parent, CfgNode) and parent.is_new_allowed() \
                and leaf not in parent:
            tree: Any = value
            for part in reversed(str(key).split(".")):
                tree = {part: tree}
            node.merge_from_other_cfg(CfgNode(tree))  # decodes the value as merge_from_list
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
