"""Bindings of csrc/linear_lowp.cpp's int8 op: weight-only int8 linear, the first kernel of the quantized
phase. A weight (N, K) is quantized once per output channel, symmetrically
(weight_formats.quantize_per_channel, re-exported here); `linear_q8(x, w_q, scale, bias)` is
then x @ (scale[:, None] * w_q)^T + bias with float32 activations and float32 arithmetic: the
int8 weights are widened as they are read, so the only error is the weights' rounding, and a
decode step reads a quarter of the bytes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..weight_formats import dequantize, quantize_per_channel
from ._build import load
from ._common import CALL_ERRORS, I8, call_lowp, diagnose, fake_check, fake_out, fake_tensor, \
    fake_x_and_bias, grad_x_and_bias, tensor_problem

load()  # build / load the C++ extension (cached); raises CustomOpsUnavailable

_linear_q8 = torch.ops.smallmind.linear_q8.default
_linear_q8_inference = torch.ops.smallmind.linear_q8_inference.default
_linear_q8_out = torch.ops.smallmind.linear_q8_out.default

__all__ = ["dequantize", "linear_q8", "linear_q8_reference", "quantize_per_channel"]


def linear_q8_reference(x, w_q, scale, bias=None):
    """Plain PyTorch: F.linear with the dequantized weight."""
    return F.linear(x, dequantize(w_q, scale), bias)


def linear_q8(x: torch.Tensor, w_q: torch.Tensor, scale: torch.Tensor, bias=None,
              out=None) -> torch.Tensor:
    """x (..., K) float32 @ (scale[:, None] * w_q)^T + bias -> (..., N) float32; with `out`
    ((..., N)), written there."""
    return call_int8("linear_q8", (_linear_q8, _linear_q8_inference, _linear_q8_out), x, w_q,
                     scale, bias, out)


def call_int8(op: str, variants, x, w_q, scale, bias, out):
    """call_lowp for an op with linear_q8's arguments, a bad argument named in the error."""
    try:
        return call_lowp(variants, (x, w_q, scale, bias), out)
    except CALL_ERRORS as exc:
        problem = tensor_problem(op, "w_q", w_q, I8)
        if problem is not None:
            raise problem from exc
        diagnose(op, exc, tensors=(("x", x), ("scale", scale)),
                 optional=(("bias", bias), ("out", out)))
        raise


# ---- fakes: the result's shape, refusing what int8_check (linear_lowp.cpp) refuses ----

def register_int8_fakes(op: str) -> None:
    """The fakes of smallmind::`op`, its _inference twin and its _out variant, for an op with
    linear_q8's arguments (x, w_q, scale, bias)."""

    def fake(x, w_q, scale, bias=None):
        N, _ = fake_x_and_bias(op, x, w_q, "w_q", I8, bias)
        fake_tensor(op, "scale", scale, dim=1, contiguous=True)
        fake_check(op, "'scale'", scale.shape[0] == N)
        return x.new_empty((*x.shape[:-1], N))

    def out_fake(x, w_q, scale, bias=None, *, out):
        fake_out(op, out, fake(x, w_q, scale, bias).shape)

    torch.library.register_fake(f"smallmind::{op}", fake)
    torch.library.register_fake(f"smallmind::{op}_inference", fake)
    torch.library.register_fake(f"smallmind::{op}_out", out_fake)


register_int8_fakes("linear_q8")


# ---- autograd: through x and bias (the int8 weight and its scale are constants) ----

def _setup_context(ctx, inputs, output):
    x, w_q, scale, bias = inputs
    ctx.save_for_backward(w_q, scale)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    w_q, scale = ctx.saved_tensors
    grad_x, grad_bias = grad_x_and_bias(ctx, grad, dequantize(w_q, scale), 3)
    return grad_x, None, None, grad_bias


def register_int8_autograd(op: str) -> None:
    """Straight through x and bias, the int8 weight dequantized (linear_q8 and linear_w8a8)."""
    torch.library.register_autograd(f"smallmind::{op}", _backward, setup_context=_setup_context)


register_int8_autograd("linear_q8")
