"""Bindings of csrc/linear_lowp.cpp's int4 op: `linear_q4(x, w_packed, scales, group_size, bias)`
takes an int4 weight as weight_formats.quantize_int4 stores it (packed two per byte, uint8
(N, K / 2), float32 scales (N, K / group_size), one per row and group of inputs), quantizes each
row of x to int8 as linear_w8a8 does (weight_formats.quantize_rows), sums each group's products
exactly in int32 and scales: y[m, n] = s_x[m] * sum_g scales[n, g] * isum[m, n, g] + bias[n].
On a CPU with AVX512_VNNI it runs on vpdpbusd (`linear_q4_kernel()` says which). Inference only:
no autograd formula (a model's int4 copies have no gradient to give, forms.inference_only)."""
from __future__ import annotations

import torch

from ..weight_formats import linear_w4a8_reference  # noqa: F401 (ops.linear_w4a8_reference)
from ._build import load
from ._common import CALL_ERRORS, U8, check_int, diagnose, fake_check, fake_out, fake_tensor, \
    needs_grad, tensor_problem

load()  # build / load the C++ extension (cached); raises CustomOpsUnavailable

_linear_q4 = torch.ops.smallmind.linear_q4.default
_linear_q4_out = torch.ops.smallmind.linear_q4_out.default

__all__ = ["linear_q4", "linear_q4_kernel", "linear_w4a8_reference"]


def linear_q4_kernel() -> str:
    """What linear_q4 runs on now (it follows the selected ISA, ops.set_isa)."""
    return torch.ops.smallmind.linear_q4_kernel()


def linear_q4(x: torch.Tensor, w_packed: torch.Tensor, scales: torch.Tensor, group_size: int = 32,
              bias=None, out=None) -> torch.Tensor:
    """x (..., K) float32, w_packed uint8 (N, K / 2), scales float32 (N, K / group_size) ->
    (..., N) float32; with `out` ((..., N)), written there."""
    if needs_grad(x, bias):
        raise RuntimeError("smallmind::linear_q4 is inference only (no autograd); call it under "
                           "torch.no_grad() or torch.inference_mode()")
    try:
        if out is None:
            return _linear_q4(x, w_packed, scales, group_size, bias)
        _linear_q4_out(x, w_packed, scales, group_size, bias, out=out)
        return out
    except CALL_ERRORS as exc:
        problem = tensor_problem("linear_q4", "w_packed", w_packed, U8)
        if problem is not None:
            raise problem from exc
        check_int("linear_q4", "group_size", group_size)
        diagnose("linear_q4", exc, tensors=(("x", x), ("scales", scales)),
                 optional=(("bias", bias), ("out", out)))
        raise


# ---- fakes: the result's shape, refusing what q4_check (linear_lowp.cpp) refuses ----

@torch.library.register_fake("smallmind::linear_q4")
def _linear_q4_fake(x, w_packed, scales, group_size, bias=None):
    op = "linear_q4"
    fake_check(op, "group_size", group_size >= 1 and group_size % 32 == 0, value=True)
    fake_tensor(op, "x", x, min_dim=1)
    fake_tensor(op, "w_packed", w_packed, U8, dim=2, contiguous=True)
    n, k = w_packed.shape[0], 2 * w_packed.shape[1]
    fake_check(op, "sizes", x.shape[-1] == k and k % group_size == 0)
    fake_tensor(op, "scales", scales, dim=2, contiguous=True)
    fake_check(op, "'scales'", tuple(scales.shape) == (n, k // group_size))
    if bias is not None:
        fake_tensor(op, "bias", bias, dim=1, contiguous=True)
        fake_check(op, "'bias'", bias.shape[0] == n)
    return x.new_empty((*x.shape[:-1], n))


@torch.library.register_fake("smallmind::linear_q4_out")
def _linear_q4_out_fake(x, w_packed, scales, group_size, bias=None, *, out):
    fake_out("linear_q4", out, _linear_q4_fake(x, w_packed, scales, group_size, bias).shape)
