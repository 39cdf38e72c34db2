"""Bindings of csrc/linear_q8.cpp: weight-only int8 linear, the first kernel of the quantized
phase. A weight (N, K) is quantized once per output channel, symmetrically
(`quantize_per_channel`: scale[n] = max |w[n, :]| / 127, w_q = round(w / scale) in [-127, 127]);
`linear_q8(x, w_q, scale, bias)` is then x @ (scale[:, None] * w_q)^T + bias with float32
activations and float32 arithmetic: the int8 weights are widened as they are read, so the only
error is the weights' rounding, and a decode step reads a quarter of the bytes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._build import load
from ._common import CALL_ERRORS, I8, check_contiguous, check_dim, check_min_dim, check_out, \
    check_shape, check_tensor, diagnose, needs_grad, tensor_problem

load()  # build / load the C++ extension (cached); raises CustomOpsUnavailable

_linear_q8 = torch.ops.smallmind.linear_q8.default
_linear_q8_inference = torch.ops.smallmind.linear_q8_inference.default
_linear_q8_out = torch.ops.smallmind.linear_q8_out.default

__all__ = ["dequantize", "linear_q8", "linear_q8_reference", "quantize_per_channel"]


def quantize_per_channel(weight: torch.Tensor) -> tuple:
    """(w_q int8 (N, K), scale float32 (N,)) of a float weight (N, K), nn.Linear layout. A row
    of zeros gets scale 1 (its w_q is 0); a non-finite weight is refused."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"quantize_per_channel: weight must be a 2-D floating-point tensor "
                         f"(N, K), got {getattr(weight, 'shape', type(weight).__name__)}")
    w = weight.detach().float()
    if not torch.isfinite(w).all():
        raise ValueError("quantize_per_channel: weight holds NaN or inf; int8 cannot represent it")
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    w_q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(I8)
    return w_q.contiguous(), scale.contiguous()


def dequantize(w_q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float weight an int8 one stands for: scale[:, None] * w_q."""
    return w_q.float() * scale[:, None]


def linear_q8_reference(x, w_q, scale, bias=None):
    """Plain PyTorch: F.linear with the dequantized weight."""
    return F.linear(x, dequantize(w_q, scale), bias)


def linear_q8(x: torch.Tensor, w_q: torch.Tensor, scale: torch.Tensor, bias=None,
              out=None) -> torch.Tensor:
    """x (..., K) float32 @ (scale[:, None] * w_q)^T + bias -> (..., N) float32; with `out`
    ((..., N)), written there."""
    try:
        grad = needs_grad(x, bias)
        if out is None:
            return (_linear_q8 if grad else _linear_q8_inference)(x, w_q, scale, bias)
        if grad:  # the out-variant records no gradient: compute with autograd, record the copy
            return out.copy_(_linear_q8(x, w_q, scale, bias))
        _linear_q8_out(x, w_q, scale, bias, out=out)
        return out
    except CALL_ERRORS as exc:
        problem = tensor_problem("linear_q8", "w_q", w_q, I8)
        if problem is not None:
            raise problem from exc
        diagnose("linear_q8", exc, tensors=(("x", x), ("scale", scale)),
                 optional=(("bias", bias), ("out", out)))
        raise


# ---- fake: the kernel's checks, then the shape ----

@torch.library.register_fake("smallmind::linear_q8")
def _linear_q8_fake(x, w_q, scale, bias=None):
    op = "linear_q8"
    check_tensor(op, "x", x)
    check_min_dim(op, "x", x, 1)
    check_tensor(op, "w_q", w_q, I8)
    check_dim(op, "w_q", w_q, 2)
    check_contiguous(op, "w_q", w_q)
    N, K = w_q.shape
    torch._check(x.shape[-1] == K, lambda: f"smallmind::{op}: size mismatch, x.size(-1) = "
                                           f"{x.shape[-1]} but w_q.size(1) (K) = {K} (they must be equal)")
    check_tensor(op, "scale", scale)
    check_shape(op, "scale", scale, (N,))
    check_contiguous(op, "scale", scale)
    if bias is not None:
        check_tensor(op, "bias", bias)
        check_shape(op, "bias", bias, (N,))
        check_contiguous(op, "bias", bias)
    return x.new_empty((*x.shape[:-1], N))


@torch.library.register_fake("smallmind::linear_q8_inference")
def _linear_q8_inference_fake(x, w_q, scale, bias=None):
    return _linear_q8_fake(x, w_q, scale, bias)


@torch.library.register_fake("smallmind::linear_q8_out")
def _linear_q8_out_fake(x, w_q, scale, bias=None, *, out):
    check_out("linear_q8", out, _linear_q8_fake(x, w_q, scale, bias).shape)


# ---- autograd: through x and bias (the int8 weight and its scale are constants) ----

def _setup_context(ctx, inputs, output):
    x, w_q, scale, bias = inputs
    ctx.save_for_backward(w_q, scale)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    w_q, scale = ctx.saved_tensors
    grad_x = grad @ dequantize(w_q, scale) if ctx.needs_input_grad[0] else None
    grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias and ctx.needs_input_grad[3] \
        else None
    return grad_x, None, None, grad_bias


torch.library.register_autograd("smallmind::linear_q8", _backward, setup_context=_setup_context)
