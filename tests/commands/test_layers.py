"""The package's layering (docs/architecture.md): every import goes to the same
package or to one below it, nothing imports the old re-export paths, and so
there is no import circle. Read from the source with ``ast`` (imports inside
functions count too)."""
from __future__ import annotations

import ast
import os

import pytest

from _support import ROOT

PACKAGE = os.path.join(ROOT, "mit_semseg")

# bottom to top: a package may import those before it in this list
LAYERS = ["errors", "nn", "runtime", "config", "checkpoints", "data", "models", "accel",
          "inference", "web", "export", "prediction", "evaluation", "training", "benchmark",
          "commands", "__main__",
          # round 2's python -m mit_semseg.<module> paths: one line naming the command
          "curves", "datatools", "pretrained", "synthetic"]
OLD_PATHS = {"lib", "utils", "dataset", "models.models", "models.utils"}


def _modules():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".")
                yield rel.removesuffix(".__init__"), path


def _is_old(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in OLD_PATHS)


def _imports(module: str, path: str) -> list[str]:
    """Modules of the package that ``module`` imports, as dotted names below mit_semseg."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    is_package = path.endswith("__init__.py")
    here = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name[len("mit_semseg."):] for a in node.names
                      if a.name.startswith("mit_semseg.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1] if node.level > 1 else here
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("mit_semseg"):
                target = node.module[len("mit_semseg."):] if "." in node.module else ""
            else:
                continue
            if node.module is None or target == "":
                found += [f"{target}.{a.name}".strip(".") for a in node.names]
            else:
                found.append(target)
    return [f for f in found if f]


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


MODULES = sorted((m, p) for m, p in _modules() if m != "__init__" and not _is_old(m))


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_go_down(module, path):
    assert module.split(".")[0] in LAYERS, f"{module}: add its package to LAYERS and the map"
    for target in _imports(module, path):
        assert not _is_old(target), f"{module} imports the old path {target}"
        top = target.split(".")[0]
        if top == module.split(".")[0]:
            continue
        assert _layer(target) < _layer(module), \
            f"{module} imports {target}, which is not below it (docs/architecture.md)"


def test_no_import_circle_between_modules():
    names = {m for m, _ in MODULES}
    graph = {m: {t for t in _imports(m, p) if t in names and t != m} for m, p in MODULES}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack + [node, nxt]))
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
