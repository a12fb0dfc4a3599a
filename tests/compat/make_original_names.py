"""Write ``original_names.json``: the public names of every module of mit-semseg 1.0.0.

Run once, by hand, with the registry's wheel (nothing of the original is stored
in this repository, only the names and parameter lists this script derives)::

    pip download --no-deps mit-semseg==1.0.0 -d /tmp/orig_pkg
    python tests/compat/make_original_names.py /tmp/orig_pkg/mit_semseg-1.0.0-py3-none-any.whl

The wheel is parsed statically (``ast``), never imported. A module's public
names (``modules``) are its top-level functions, classes, assigned names and
names bound by ``from <mit_semseg module> import name``, plus ``__all__`` and
what ``from .m import *`` brings in; names starting with ``_`` are private.
Names a module merely imports from a third-party package (``from torch.autograd
import Variable``) are listed apart (``third_party``: module -> {name:
"source.module:original_name"}); plain ``import x`` is not counted. The vendored test-suite of the synchronized
BatchNorm (``lib/nn/modules/tests``) is not part of the API and is left out.

For every public function and class the parameter names are recorded too
(``signatures``: "module:name" -> [[param, has_default], ...]; for a class, those
of its ``__init__`` without ``self``), so a test can check call compatibility.
"""
from __future__ import annotations

import ast
import json
import os
import sys
import zipfile

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "original_names.json")
SKIPPED_PACKAGES = ("mit_semseg.lib.nn.modules.tests",)


def _module_name(path: str) -> str:
    parts = path[:-len(".py")].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _params(fn: ast.FunctionDef, drop_self: bool) -> list[list]:
    args = fn.args
    positional = args.posonlyargs + args.args
    with_default = set(range(len(positional) - len(args.defaults), len(positional)))
    out = [[a.arg, i in with_default] for i, a in enumerate(positional)]
    if drop_self and out:
        out = out[1:]
    out += [[a.arg, d is not None] for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    return out


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _scan(module: str, is_package: bool, source: str) -> tuple[set, list, dict, dict]:
    """(names, star-import targets, signatures, third-party imports) of one module's top level."""
    names: set[str] = set()
    foreign: dict[str, str] = {}
    stars: list[str] = []
    sigs: dict[str, list] = {}
    declared_all: list[str] | None = None
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
            sigs[node.name] = _params(node, drop_self=False)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            init = next((b for b in node.body if isinstance(b, ast.FunctionDef)
                         and b.name == "__init__"), None)
            if init is not None:
                sigs[node.name] = _params(init, drop_self=True)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
                    if target.id == "__all__" and isinstance(node.value, (ast.List, ast.Tuple)):
                        declared_all = [ast.literal_eval(e) for e in node.value.elts]
        elif isinstance(node, ast.ImportFrom):
            source_module = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:
                if alias.name == "*":
                    stars.append(source_module)
                elif source_module.split(".")[0] == "mit_semseg":
                    names.add(alias.asname or alias.name)
                else:
                    foreign[alias.asname or alias.name] = f"{source_module}:{alias.name}"
    if declared_all is not None:
        names.update(declared_all)
    names -= set(foreign) - set(declared_all or ())
    foreign = {n: m for n, m in foreign.items() if n not in names and not n.startswith("_")}
    return {n for n in names if not n.startswith("_")}, stars, sigs, foreign


def main(wheel: str) -> None:
    scanned = {}
    with zipfile.ZipFile(wheel) as zf:
        for path in sorted(zf.namelist()):
            if not (path.startswith("mit_semseg/") and path.endswith(".py")):
                continue
            module = _module_name(path)
            if module.startswith(SKIPPED_PACKAGES):
                continue
            source = zf.read(path).decode("utf-8")
            scanned[module] = _scan(module, path.endswith("__init__.py"), source)

    def public(module: str, seen: frozenset = frozenset()) -> set:
        names, stars, _, _ = scanned[module]
        out = set(names)
        for target in stars:
            if target in scanned and target not in seen:
                out |= public(target, seen | {module})
        return out

    result = {"modules": {m: sorted(public(m)) for m in sorted(scanned)},
              "signatures": {f"{m}:{n}": p for m in sorted(scanned)
                             for n, p in sorted(scanned[m][2].items()) if not n.startswith("_")},
              "third_party": {m: scanned[m][3] for m in sorted(scanned) if scanned[m][3]}}
    with open(OUT, "w") as fh:
        json.dump(result, fh, indent=1, sort_keys=True)
        fh.write("\n")
    total = sum(len(v) for v in result["modules"].values())
    foreign = sum(len(v) for v in result["third_party"].values())
    print(f"{len(result['modules'])} modules, {total} names, {foreign} third-party "
          f"re-exports -> {OUT}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
