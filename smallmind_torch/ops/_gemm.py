"""Bindings of csrc/gemm.cpp: `gemm` and `linear` on the packed GEMM (AVX-512, AVX2 or plain C++
micro-kernel, whichever ISA is selected: see `_isa`), and the cache of packed weights that the
no-grad `linear` keeps (see gemm.cpp for when a cached copy is used and when it is repacked)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._build import load
from ._common import CALL_ERRORS, diagnose, fake_check, fake_out, fake_tensor, needs_grad

load()  # build / load the C++ extension (cached); raises CustomOpsUnavailable

_ops = torch.ops.smallmind
_gemm, _gemm_inference, _gemm_out = (_ops.gemm.default, _ops.gemm_inference.default,
                                     _ops.gemm_out.default)
_linear, _linear_inference, _linear_out = (_ops.linear.default, _ops.linear_inference.default,
                                           _ops.linear_out.default)

__all__ = ["gemm", "gemm_reference", "linear", "linear_reference", "kernel_name",
           "packed_weight_cache"]


# ---- references (plain PyTorch) ----

def gemm_reference(a: Tensor, b: Tensor) -> Tensor:
    """(M, K) @ (K, N) with torch.mm."""
    return torch.mm(a, b)


def linear_reference(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """x @ weight.T + bias, weight stored (N, K) as nn.Linear stores it."""
    y = torch.matmul(x, weight.t())
    return y + bias if bias is not None else y


def kernel_name() -> str:
    """The micro-kernel of the selected ISA: 'avx512-8x32', 'avx2-fma-6x16' or 'scalar-4x4'."""
    return _ops.gemm_kernel_name()


def packed_weight_cache(capacity_bytes: Optional[int] = None) -> dict:
    """The cache of packed weights that `linear` without autograd keeps: {'entries', 'bytes',
    'capacity_bytes'}. With `capacity_bytes`, first set the capacity (least recently used
    weights are dropped down to it; 0 empties the cache and turns it off). Empty it after
    changing a weight behind its version counter (through `.data` or numpy)."""
    if capacity_bytes is not None and (isinstance(capacity_bytes, bool)
                                       or not isinstance(capacity_bytes, int)):
        raise TypeError(f"smallmind::packed_weight_cache: capacity_bytes must be an int or None, "
                        f"got {type(capacity_bytes).__name__}")
    entries, nbytes, capacity = _ops.packed_weight_cache(capacity_bytes)
    return {"entries": entries, "bytes": nbytes, "capacity_bytes": capacity}


# ---- public wrappers ----

def gemm(a: Tensor, b: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """a (M, K) @ b (K, N), strided views read in place; with `out` ((M, N)), written there."""
    try:
        grad = needs_grad(a, b)
        if out is None:
            return (_gemm if grad else _gemm_inference)(a, b)
        if grad:  # the out-variant records no gradient: compute with autograd, record the copy
            return out.copy_(_gemm(a, b))
        _gemm_out(a, b, out=out)
        return out
    except CALL_ERRORS as exc:
        diagnose("gemm", exc, tensors=(("a", a), ("b", b)), optional=(("out", out),))
        raise


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
           out: Optional[Tensor] = None) -> Tensor:
    """x (..., K) @ weight (N, K)^T + bias (N,); with `out` ((..., N)), written there."""
    try:
        grad = needs_grad(x, weight, bias)
        if out is None:
            return (_linear if grad else _linear_inference)(x, weight, bias)
        if grad:
            return out.copy_(_linear(x, weight, bias))
        _linear_out(x, weight, bias, out=out)
        return out
    except CALL_ERRORS as exc:
        diagnose("linear", exc, tensors=(("x", x), ("weight", weight)),
                 optional=(("bias", bias), ("out", out)))
        raise


# ---- fakes: the result's shape, refusing what gemm_check / linear_check (gemm.cpp) refuse ----

def _gemm_shape(a: Tensor, b: Tensor) -> tuple:
    fake_tensor("gemm", "a", a, dim=2)
    fake_tensor("gemm", "b", b, dim=2)
    fake_check("gemm", "sizes", a.shape[1] == b.shape[0])
    return (a.shape[0], b.shape[1])


def _linear_shape(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> tuple:
    fake_tensor("linear", "x", x, min_dim=1)
    fake_tensor("linear", "weight", weight, dim=2)
    fake_check("linear", "sizes", x.shape[-1] == weight.shape[1])
    if bias is not None:
        fake_tensor("linear", "bias", bias, dim=1)
        fake_check("linear", "'bias'", bias.shape[0] == weight.shape[0])
    return (*x.shape[:-1], weight.shape[0])


@torch.library.register_fake("smallmind::gemm")
def _gemm_fake(a, b):
    return a.new_empty(_gemm_shape(a, b))


@torch.library.register_fake("smallmind::gemm_inference")
def _gemm_inference_fake(a, b):
    return a.new_empty(_gemm_shape(a, b))


@torch.library.register_fake("smallmind::gemm_out")
def _gemm_out_fake(a, b, *, out):
    fake_out("gemm", out, _gemm_shape(a, b))


@torch.library.register_fake("smallmind::linear")
def _linear_fake(x, weight, bias):
    return x.new_empty(_linear_shape(x, weight, bias))


@torch.library.register_fake("smallmind::linear_inference")
def _linear_inference_fake(x, weight, bias):
    return x.new_empty(_linear_shape(x, weight, bias))


@torch.library.register_fake("smallmind::linear_out")
def _linear_out_fake(x, weight, bias, *, out):
    fake_out("linear", out, _linear_shape(x, weight, bias))


# ---- autograd: dA = dC @ B^T, dB = A^T @ dC (both on our GEMM; transposes are free views) ----

def _gemm_setup_context(ctx, inputs, output):
    a, b = inputs
    ctx.save_for_backward(a, b)


def _gemm_backward(ctx, grad):
    a, b = ctx.saved_tensors
    grad_a = _gemm(grad, b.t()) if ctx.needs_input_grad[0] else None
    grad_b = _gemm(a.t(), grad) if ctx.needs_input_grad[1] else None
    return grad_a, grad_b


torch.library.register_autograd("smallmind::gemm", _gemm_backward,
                                setup_context=_gemm_setup_context)


def _linear_setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _linear_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    n, k = weight.shape
    g2 = grad.reshape(-1, n)
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = _gemm(g2, weight).reshape(x.shape)          # (M,N) @ (N,K)
    if ctx.needs_input_grad[1]:
        grad_w = _gemm(g2.t(), x.reshape(-1, k))             # (N,M) @ (M,K)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_b = g2.sum(0)
    return grad_x, grad_w, grad_b


torch.library.register_autograd("smallmind::linear", _linear_backward,
                                setup_context=_linear_setup_context)
