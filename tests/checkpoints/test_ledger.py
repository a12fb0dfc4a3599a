"""The checkpoints package's split: the hash ledger, the downloads and the
released-model catalogue are separate modules; writing and reading weight files
goes through the ledger, never through the download module."""
import ast
import os

import pytest

import mit_semseg.checkpoints as package

FOLDER = os.path.dirname(package.__file__)


def _imports(module):
    """The modules ``module`` (a file of mit_semseg/checkpoints) imports from the package."""
    with open(os.path.join(FOLDER, module + ".py"), encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.add(node.module or "")
        elif isinstance(node, ast.ImportFrom) and node.level == 2 and node.module:
            found.add(".." + node.module)
    return found


@pytest.mark.parametrize("module", ["ledger", "formats", "files", "hub", "_atomic", "_errors"])
def test_files_and_the_ledger_do_not_use_the_downloads(module):
    assert "download" not in _imports(module)


def test_the_ledger_depends_on_nothing_above_it():
    assert _imports("ledger") <= {"_atomic", "_errors"}


def test_the_download_module_does_not_know_the_catalogue():
    assert "released" not in _imports("download")

