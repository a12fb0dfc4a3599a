"""Fixtures shared by the training tests."""
import os

import pytest

from _custom_data import make_rgb
from mit_semseg.commands import datatools


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small colour-coded dataset with odgt lists: (root, layout)."""
    root = str(tmp_path_factory.mktemp("rgb") / "data")
    layout = make_rgb(root)
    assert datatools.main(["odgt", "--images", os.path.join(root, "images"), "--masks",
                           os.path.join(root, "masks"), "--root", root,
                           "--val-fraction", "0.25"]) == 0
    return root, layout
