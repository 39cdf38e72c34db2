"""Bindings of csrc/linear_lowp.cpp's w8a8 op: `linear_w8a8(x, w_q, scale, bias)` takes
linear_q8's int8 weights (quantized per output channel) and quantizes each row of x on the fly
(weight_formats.quantize_rows: symmetric, per row), then computes exact int32 dot products of
the int8 rows: y = (sum_k q_x[m, k] w_q[n, k] * s_x[m]) * scale[n] + bias[n]. That is what the
engines' int8 compute types do (CTranslate2's int8, ONNX Runtime's dynamic quantization); on a
CPU with AVX512_VNNI it runs on vpdpbusd (`linear_w8a8_kernel()` says which). A row holding NaN
or inf gives NaN outputs. The gradient flows straight through the rounding of x."""
from __future__ import annotations

import torch

from ..weight_formats import linear_w8a8_reference  # noqa: F401 (ops.linear_w8a8_reference)
from ._build import load
from ._linear_q8 import call_int8, register_int8_autograd, register_int8_fakes

load()  # build / load the C++ extension (cached); raises CustomOpsUnavailable

_VARIANTS = (torch.ops.smallmind.linear_w8a8.default,
             torch.ops.smallmind.linear_w8a8_inference.default,
             torch.ops.smallmind.linear_w8a8_out.default)

__all__ = ["linear_w8a8", "linear_w8a8_kernel", "linear_w8a8_reference"]


def linear_w8a8_kernel() -> str:
    """What linear_w8a8 runs on now (it follows the selected ISA, ops.set_isa)."""
    return torch.ops.smallmind.linear_w8a8_kernel()


def linear_w8a8(x: torch.Tensor, w_q: torch.Tensor, scale: torch.Tensor, bias=None,
                out=None) -> torch.Tensor:
    """x (..., K) float32, w_q int8 (N, K), scale float32 (N,) -> (..., N) float32; with `out`
    ((..., N)), written there."""
    return call_int8("linear_w8a8", _VARIANTS, x, w_q, scale, bias, out)


register_int8_fakes("linear_w8a8")
register_int8_autograd("linear_w8a8")
