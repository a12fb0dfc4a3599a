"""Run a client program on a machine without CUDA.

    python run_client.py CLIENT.py [ARGS...]

``Tensor.cuda``, ``Module.cuda``, ``torch.cuda.set_device`` and
``torch.cuda.synchronize`` become no-ops, then CLIENT.py runs as ``__main__``
with ARGS. Whichever ``mit_semseg`` is first on the path is the one tested.

With ``PORTABLE_KERNELS=1`` in the environment, convolutions skip oneDNN
(whose float32 kernels and blocking differ between CPUs: AMX, AVX-512, AVX2,
cache sizes) and run as im2col + MKL GEMM. Together with ``MKL_CBWR=COMPATIBLE``,
``ATEN_CPU_CAPABILITY=default`` and one thread (set by the caller, before
torch loads), every x86-64 CPU then computes the same bits, so numbers the
original printed on one machine can be checked exactly on another.
"""
import os
import runpy
import sys

import torch


def _stay(self, *args, **kwargs):
    return self


torch.Tensor.cuda = _stay
torch.nn.Module.cuda = _stay
torch.cuda.set_device = lambda device: None
torch.cuda.synchronize = lambda device=None: None
if os.environ.get("PORTABLE_KERNELS") == "1":
    torch.backends.mkldnn.enabled = False

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
