"""Bindings of csrc/linear_lowp.cpp's bf16 op: `linear_bf16(x, w, bias)` = bf16(x) @ w^T + bias,
w a bfloat16 weight (N, K) (weight_formats.to_bf16), x float32 rounded to bf16 as a bf16 dot
product reads it, the products (exact in float32) summed in float32. On a CPU with AVX512_BF16
it runs on the native dot product; elsewhere each bf16 is widened to float32 as it is read
(`linear_bf16_kernel()` says which). The gradient flows through x and bias (straight through
the rounding of x)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..weight_formats import round_to_bf16
from ._build import load
from ._common import BF16, CALL_ERRORS, call_lowp, diagnose, fake_out, fake_x_and_bias, \
    grad_x_and_bias, tensor_problem

load()  # build / load the C++ extension (cached); raises CustomOpsUnavailable

_VARIANTS = (torch.ops.smallmind.linear_bf16.default,
             torch.ops.smallmind.linear_bf16_inference.default,
             torch.ops.smallmind.linear_bf16_out.default)

__all__ = ["has_bf16_dot", "linear_bf16", "linear_bf16_kernel", "linear_bf16_reference"]


def linear_bf16_kernel() -> str:
    """What linear_bf16 runs on now (it follows the selected ISA, ops.set_isa)."""
    return torch.ops.smallmind.linear_bf16_kernel()


def has_bf16_dot() -> bool:
    """Whether this CPU has native bf16 dot products (AVX512_BF16) and they run now."""
    return linear_bf16_kernel().startswith("avx512_bf16")


def linear_bf16_reference(x, w, bias=None):
    """Plain PyTorch: F.linear in float32 on the operands rounded to bf16."""
    return F.linear(round_to_bf16(x), w.float(), bias)


def linear_bf16(x: torch.Tensor, w: torch.Tensor, bias=None, out=None) -> torch.Tensor:
    """x (..., K) float32 @ w^T (w bfloat16 (N, K)) + bias -> (..., N) float32; with `out`
    ((..., N)), written there."""
    try:
        return call_lowp(_VARIANTS, (x, w, bias), out)
    except CALL_ERRORS as exc:
        problem = tensor_problem("linear_bf16", "w", w, BF16)
        if problem is not None:
            raise problem from exc
        diagnose("linear_bf16", exc, tensors=(("x", x),), optional=(("bias", bias), ("out", out)))
        raise


# ---- fakes: the result's shape, refusing what lowp_check (linear_lowp.cpp) refuses ----

@torch.library.register_fake("smallmind::linear_bf16")
def _linear_bf16_fake(x, w, bias=None):
    N, _ = fake_x_and_bias("linear_bf16", x, w, "w", BF16, bias)
    return x.new_empty((*x.shape[:-1], N))


@torch.library.register_fake("smallmind::linear_bf16_inference")
def _linear_bf16_inference_fake(x, w, bias=None):
    return _linear_bf16_fake(x, w, bias)


@torch.library.register_fake("smallmind::linear_bf16_out")
def _linear_bf16_out_fake(x, w, bias=None, *, out):
    fake_out("linear_bf16", out, _linear_bf16_fake(x, w, bias).shape)


def _setup_context(ctx, inputs, output):
    x, w, bias = inputs
    ctx.save_for_backward(w)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    (w,) = ctx.saved_tensors
    grad_x, grad_bias = grad_x_and_bias(ctx, grad, w.float(), 2)
    return grad_x, None, grad_bias


torch.library.register_autograd("smallmind::linear_bf16", _backward, setup_context=_setup_context)
