"""Run a client program on a machine without CUDA.

    python run_client.py CLIENT.py [ARGS...]

``Tensor.cuda``, ``Module.cuda``, ``torch.cuda.set_device`` and
``torch.cuda.synchronize`` become no-ops, then CLIENT.py runs as ``__main__``
with ARGS. Whichever ``mit_semseg`` is first on the path is the one tested.
"""
import runpy
import sys

import torch


def _stay(self, *args, **kwargs):
    return self


torch.Tensor.cuda = _stay
torch.nn.Module.cuda = _stay
torch.cuda.set_device = lambda device: None
torch.cuda.synchronize = lambda device=None: None

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
