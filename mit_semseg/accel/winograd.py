"""Winograd F(2x2, 3x3) convolution for inference copies (CPU, float32).

A 3x3 "same" convolution (stride 1, padding = dilation, one group) computes
each 2x2 block of outputs from a 4x4 block of inputs. Winograd's minimal
filtering algorithm does that with 16 products per input/output channel pair
instead of 36: the input tiles and the kernel go through fixed linear
transforms (``B^T d B``, ``G g G^T``), the 16 transformed planes are multiplied
as 16 matrix products over the channels (one ``torch.bmm``) and the result
comes back through ``A^T m A``. With dilation ``d`` the same holds on each of
the ``d x d`` interleaved sub-lattices, which are strided views here.

For the wide convolutions of the dilated ResNets' last stages and the PPM /
UPerNet heads this is 1.2-1.9x faster than oneDNN's direct kernel on 2-core
x86 machines (``docs/benchmark.md``). The transforms only add, subtract and
halve, so the error stays at the level of a float32 dot product (about
0.3-0.7x that of oneDNN's channels-last direct kernel against float64, see
``tests/test_winograd.py``): labels are the same except at float ties.

The kernel transform is computed in float64 and rounded once. The input is
processed in bands of tile rows so that the transformed input stays within
``band_bytes``.
"""
from __future__ import annotations

import torch

__all__ = ["transform_weight", "winograd_conv3x3", "winograd_eligible"]

# G (4x3): the kernel transform G g G^T
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))

BAND_BYTES = 16 * 2 ** 20  # below glibc's mmap threshold as tuned (utils.tune_allocator): reused


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """``G g G^T`` of every 3x3 kernel of ``weight`` [Co, Ci, 3, 3], as [16, Ci, Co]
    float32 (row-major over the 4x4 transformed positions)."""
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"expected a [Co, Ci, 3, 3] kernel, got {tuple(weight.shape)}")
    g = torch.tensor(_G, dtype=torch.float64)
    u = torch.einsum("ai,oxij,bj->abxo", g, weight.detach().double(), g)
    co, ci = weight.shape[:2]
    return u.reshape(16, ci, co).to(torch.float32).contiguous()


def winograd_eligible(weight: torch.Tensor, stride, padding, dilation, groups: int) -> bool:
    """Whether a convolution with these settings is one this module computes."""
    return (weight.dim() == 4 and tuple(weight.shape[2:]) == (3, 3) and groups == 1
            and tuple(stride) == (1, 1) and dilation[0] == dilation[1]
            and tuple(padding) == tuple(dilation))


def _input_band(xv: torch.Tensor, t0: int, t1: int, tw: int, out: torch.Tensor) -> None:
    """``B^T d B`` of the tiles of tile rows [t0, t1) of the padded input view
    ``xv`` [N, Hm, d, Wm, d, C] into ``out`` [4, 4, N, t1-t0, d, tw, d, C]."""
    rows = [xv[:, 2 * t0 + k:2 * t1 + k:2] for k in range(4)]  # [N, tb, d, Wm, d, C]
    # B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], along H ...
    r = (rows[0] - rows[2], rows[1] + rows[2], rows[2] - rows[1], rows[1] - rows[3])
    for a in range(4):  # ... then along W
        c = [r[a][:, :, :, k:k + 2 * tw:2] for k in range(4)]
        torch.sub(c[0], c[2], out=out[a, 0])
        torch.add(c[1], c[2], out=out[a, 1])
        torch.sub(c[2], c[1], out=out[a, 2])
        torch.sub(c[1], c[3], out=out[a, 3])


def _output_band(m: torch.Tensor, out: torch.Tensor) -> None:
    """``A^T m A`` of the products ``m`` [4, 4, N, tb, d, tw, d, Co] into the 2x2
    output blocks ``out`` [N, tb, 2, d, tw, 2, d, Co]."""
    # A^T = [[1, 1, 1, 0], [0, 1, -1, -1]], along the first transformed axis ...
    s = (m[0] + m[1] + m[2], m[1] - m[2] - m[3])
    for i in range(2):  # ... then the second
        torch.add(s[i][0] + s[i][1], s[i][2], out=out[:, :, i, :, :, 0])
        torch.sub(s[i][1] - s[i][2], s[i][3], out=out[:, :, i, :, :, 1])


def winograd_conv3x3(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None = None,
                     dilation: int = 1, other: torch.Tensor | None = None,
                     activation: str = "none", band_bytes: int = BAND_BYTES) -> torch.Tensor:
    """``act(conv3x3(x, w, bias, padding=dilation, dilation=dilation) [+ other])``.

    ``x``: [N, Ci, H, W] float32 (any memory format; read once into a padded
    channels-last buffer); ``weight_t``: ``transform_weight(w)``; ``other``: a
    tensor of the output's shape; ``activation``: "none", "relu" or "relu6".
    Returns a channels-last [N, Co, H, W] tensor.
    """
    n, c, h, w = x.shape
    co = weight_t.shape[2]
    if weight_t.shape[:2] != (16, c):
        raise ValueError(f"transformed kernel {tuple(weight_t.shape)} does not take {c} channels")
    d = int(dilation)
    th, tw = -(-h // (2 * d)), -(-w // (2 * d))  # 2x2 output tiles per sub-lattice
    hm, wm = 2 * th + 2, 2 * tw + 2  # padded rows / columns per sub-lattice
    xp = x.new_empty(n, hm * d, wm * d, c)
    xp[:, :d].zero_()  # the zero padding: top, bottom, left and right strips
    xp[:, d + h:].zero_()
    xp[:, d:d + h, :d].zero_()
    xp[:, d:d + h, d + w:].zero_()
    xp[:, d:d + h, d:d + w] = x.permute(0, 2, 3, 1)
    xv = xp.view(n, hm, d, wm, d, c)
    out = x.new_empty(n, th, 2, d, tw, 2, d, co)
    per_row = 16 * n * d * tw * d * c * x.element_size()
    step = max(1, min(th, band_bytes // max(per_row, 1)))
    v_buf = x.new_empty(16 * n * step * d * tw * d * c)
    for t0 in range(0, th, step):
        t1 = min(th, t0 + step)
        v = v_buf[:16 * n * (t1 - t0) * d * tw * d * c].view(4, 4, n, t1 - t0, d, tw, d, c)
        _input_band(xv, t0, t1, tw, v)
        m = torch.bmm(v.view(16, -1, c), weight_t).view(4, 4, n, t1 - t0, d, tw, d, co)
        _output_band(m, out[:, t0:t1])
    y = out.view(n, 2 * th * d, 2 * tw * d, co)
    if y.shape[1] != h or y.shape[2] != w:
        y = y[:, :h, :w]
        y = torch.add(y, bias) if bias is not None else y.contiguous()
    elif bias is not None:
        y.add_(bias)
    if other is not None:
        y.add_(other.permute(0, 2, 3, 1))
    if activation == "relu":
        y.relu_()
    elif activation == "relu6":
        y.clamp_(0.0, 6.0)
    elif activation != "none":
        raise ValueError(f"unsupported activation {activation!r}")
    return y.permute(0, 3, 1, 2)

