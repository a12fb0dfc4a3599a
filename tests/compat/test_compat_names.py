"""Every public name of the original mit-semseg 1.0.0 imports from this package.

The list (tests/compat/original_names.json) was generated once from the
registry's wheel by tests/compat/make_original_names.py.
"""
from __future__ import annotations

import importlib
import inspect
import json
import os

import pytest

NAMES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "original_names.json")
with open(NAMES_FILE) as _fh:
    ORIGINAL = json.load(_fh)

# Modern torch classes under the old path: their own (current) signatures apply.
TORCH_REEXPORTS = ("mit_semseg.lib.utils.data",)


def _resolve(module: str, name: str):
    return getattr(importlib.import_module(module), name)


def test_every_original_name_imports() -> None:
    missing = []
    total = 0
    for module, names in ORIGINAL["modules"].items():
        for name in names:
            total += 1
            try:
                _resolve(module, name)
            except (ImportError, AttributeError) as exc:
                missing.append(f"{module}.{name} ({exc})")
    print(f"original public names importable: {total - len(missing)}/{total}")
    assert total > 140
    assert not missing, "\n".join(missing)


def test_third_party_names_are_the_same_objects() -> None:
    checked = 0
    for module, names in ORIGINAL["third_party"].items():
        for name, source in names.items():
            source_module, source_name = source.split(":")
            try:
                expected = getattr(importlib.import_module(source_module), source_name)
            except ImportError:  # torchvision, torch._six: not dependencies of this package
                continue
            assert _resolve(module, name) is expected, f"{module}.{name}"
            checked += 1
    assert checked >= 10


def _params(obj) -> list[inspect.Parameter]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    params = list(inspect.signature(target).parameters.values())
    if inspect.isclass(obj) and params and params[0].name == "self":
        params = params[1:]
    return params


@pytest.mark.parametrize("key", sorted(k for k in ORIGINAL["signatures"]
                                       if not k.startswith(TORCH_REEXPORTS)))
def test_call_signature_accepts_the_originals_calls(key: str) -> None:
    """Each original parameter is accepted at the same position and by name, optional ones
    stay optional, and any extra parameter of ours has a default."""
    module, name = key.split(":")
    ours = _params(_resolve(module, name))
    variadic = {p.kind for p in ours} & {inspect.Parameter.VAR_POSITIONAL,
                                         inspect.Parameter.VAR_KEYWORD}
    named = [p for p in ours if p.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                               inspect.Parameter.VAR_KEYWORD)]
    by_name = {p.name: p for p in named}
    original = ORIGINAL["signatures"][key]
    for position, (pname, has_default) in enumerate(original):
        if pname not in by_name:
            assert inspect.Parameter.VAR_KEYWORD in variadic, f"{key}: no parameter {pname!r}"
            continue
        assert named.index(by_name[pname]) == position, f"{key}: {pname!r} moved"
        if has_default:
            assert by_name[pname].default is not inspect.Parameter.empty, \
                f"{key}: {pname!r} lost its default"
    extra = [p for p in named if p.name not in {n for n, _ in original}]
    assert all(p.default is not inspect.Parameter.empty for p in extra), \
        f"{key}: extra required parameters {[p.name for p in extra]}"
