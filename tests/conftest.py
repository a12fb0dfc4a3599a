"""Test-session settings (set before torch is imported by any test module)."""
import os

# OpenMP threads spin-wait by default; on a small or shared CPU a waiting
# thread steals the core its partner needs and runs slow by up to 10x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module (``pytestmark = pytest.mark.usefixtures(
    "one_thread")``): tiny ops on a small shared CPU run many times slower when
    OpenMP threads compete for the cores."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small colour-coded dataset with odgt lists: (root, layout) (``_custom_data``)."""
    from _custom_data import make_rgb
    from mit_semseg.commands import datatools
    root = str(tmp_path_factory.mktemp("rgb") / "data")
    layout = make_rgb(root)
    assert datatools.main(["odgt", "--images", os.path.join(root, "images"), "--masks",
                           os.path.join(root, "masks"), "--root", root,
                           "--val-fraction", "0.25"]) == 0
    return root, layout


def pytest_configure(config):
    # tests of timm: encoders (the [timm] extra); .ci/run's timm stage runs only these
    config.addinivalue_line("markers", "timm: needs the [timm] extra (skipped without timm)")
    # equality with a reference implementation installed only for that (.ci/run's timm stage)
    config.addinivalue_line("markers", "transformers: needs transformers (skipped without it)")
