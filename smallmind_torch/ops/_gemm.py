"""`gemm` and `linear` on the packed AVX2/FMA GEMM custom op (`ops/gemm.cpp`).

    gemm(a, b, out=None)                  (M, K) @ (K, N) -> (M, N), float32 CPU
    linear(x, weight, bias=None, out=None) x (..., K) @ weight(N, K)^T + bias(N) -> (..., N)

Both are `torch.ops.smallmind.*` custom ops with schemas defined in C++; this module adds
the fake (meta) implementations, so `torch.compile(fullgraph=True)` traces through them,
and the autograd formulas (the backward calls the same GEMM). With `out=` the result is
written into the caller's contiguous buffer through the `*_out` op, which allocates
nothing of size M*N (the preallocated-workspace path of the model).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._build import load

load()

_ops = torch.ops.smallmind

__all__ = ["gemm", "gemm_reference", "linear", "linear_reference", "kernel_name"]


# ---------------------------------------------------------------------------------------
# references (pure PyTorch)
# ---------------------------------------------------------------------------------------

def gemm_reference(a: Tensor, b: Tensor) -> Tensor:
    """(M, K) @ (K, N) with torch.mm."""
    return torch.mm(a, b)


def linear_reference(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """x @ weight.T + bias, weight stored (N, K) as nn.Linear stores it."""
    y = torch.matmul(x, weight.t())
    return y + bias if bias is not None else y


def kernel_name() -> str:
    """Micro-kernel compiled in: 'avx2-fma-6x16', or 'scalar' without AVX2/FMA."""
    return _ops.gemm_kernel_name()


# ---------------------------------------------------------------------------------------
# public wrappers
# ---------------------------------------------------------------------------------------

def _needs_grad(*tensors: Optional[Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _eager_no_grad(*tensors: Optional[Tensor]) -> bool:
    """True where the functional op can go through its out-variant instead: the
    register_autograd kernel is Python and costs ~15 us a call even when nothing needs a
    gradient, which matters for decode-sized GEMMs. Never while torch.compile traces."""
    return not _needs_grad(*tensors) and not torch.compiler.is_compiling()


def gemm(a: Tensor, b: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """a (M, K) @ b (K, N) -> (M, N), float32 on the CPU. Strided (e.g. transposed) views
    are read in place. With `out` ((M, N), contiguous float32) the result goes there."""
    if out is None:
        if a.dim() == 2 and b.dim() == 2 and _eager_no_grad(a, b):
            out = a.new_empty((a.shape[0], b.shape[1]))
            _ops.gemm_out.default(a, b, out=out)
            return out
        return _ops.gemm.default(a, b)
    if _needs_grad(a, b):
        # the out-variant is not differentiable: compute with autograd, record the copy
        return out.copy_(_ops.gemm.default(a, b))
    _ops.gemm_out.default(a, b, out=out)
    return out


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
           out: Optional[Tensor] = None) -> Tensor:
    """x (..., K) @ weight (N, K)^T + bias (N,) -> (..., N), float32 on the CPU.

    With `out` ((..., N), contiguous float32) the result is written there and `out` is
    returned; nothing else of size M*N is allocated (when no gradient is recorded)."""
    if out is None:
        if x.dim() >= 1 and weight.dim() == 2 and _eager_no_grad(x, weight, bias):
            out = x.new_empty((*x.shape[:-1], weight.shape[0]))
            _ops.linear_out.default(x, weight, bias, out=out)
            return out
        return _ops.linear.default(x, weight, bias)
    if _needs_grad(x, weight, bias):
        return out.copy_(_ops.linear.default(x, weight, bias))
    _ops.linear_out.default(x, weight, bias, out=out)
    return out


# ---------------------------------------------------------------------------------------
# fakes (shape inference for torch.compile / FakeTensor), mirroring the C++ checks
# ---------------------------------------------------------------------------------------

def _check_float32_cpu(t: Tensor, op: str, name: str) -> None:
    if t.dtype != torch.float32:
        raise RuntimeError(f"smallmind::{op}: '{name}' must have dtype Float, got {t.dtype}")
    if t.device.type not in ("cpu", "meta"):
        raise RuntimeError(f"smallmind::{op}: '{name}' must be a CPU tensor (only a CPU "
                           f"kernel is registered), got a tensor on {t.device}")


def _gemm_shape(a: Tensor, b: Tensor) -> tuple:
    _check_float32_cpu(a, "gemm", "a")
    _check_float32_cpu(b, "gemm", "b")
    if a.dim() != 2 or b.dim() != 2:
        raise RuntimeError(f"smallmind::gemm: 'a' and 'b' must be 2-D, got shapes "
                           f"{tuple(a.shape)} and {tuple(b.shape)}")
    torch._check(a.shape[1] == b.shape[0],
                 lambda: f"smallmind::gemm: size mismatch, a.size(1) (K) = {a.shape[1]} but "
                         f"b.size(0) (K) = {b.shape[0]} (they must be equal)")
    return (a.shape[0], b.shape[1])


def _linear_shape(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> tuple:
    _check_float32_cpu(x, "linear", "x")
    _check_float32_cpu(weight, "linear", "weight")
    if x.dim() < 1:
        raise RuntimeError("smallmind::linear: 'x' must have at least 1 dimension(s)")
    if weight.dim() != 2:
        raise RuntimeError(f"smallmind::linear: 'weight' must be 2-D (N, K), got shape "
                           f"{tuple(weight.shape)}")
    torch._check(x.shape[-1] == weight.shape[1],
                 lambda: f"smallmind::linear: size mismatch, x.size(-1) (K) = {x.shape[-1]} "
                         f"but weight.size(1) (K) = {weight.shape[1]} (they must be equal)")
    if bias is not None:
        _check_float32_cpu(bias, "linear", "bias")
        if bias.dim() != 1:
            raise RuntimeError(f"smallmind::linear: 'bias' must be 1-D of size N, got shape "
                               f"{tuple(bias.shape)}")
        torch._check(bias.shape[0] == weight.shape[0],
                     lambda: "smallmind::linear: 'bias' must have size N = weight.size(0)")
    return (*x.shape[:-1], weight.shape[0])


@torch.library.register_fake("smallmind::gemm")
def _gemm_fake(a, b):
    return a.new_empty(_gemm_shape(a, b))


@torch.library.register_fake("smallmind::gemm_out")
def _gemm_out_fake(a, b, *, out):
    _gemm_shape(a, b)
    return None


@torch.library.register_fake("smallmind::linear")
def _linear_fake(x, weight, bias):
    return x.new_empty(_linear_shape(x, weight, bias))


@torch.library.register_fake("smallmind::linear_out")
def _linear_out_fake(x, weight, bias, *, out):
    _linear_shape(x, weight, bias)
    return None


# ---------------------------------------------------------------------------------------
# autograd: dA = dC @ B^T, dB = A^T @ dC (both on our GEMM; transposes are free views)
# ---------------------------------------------------------------------------------------

def _gemm_setup_context(ctx, inputs, output):
    a, b = inputs
    ctx.save_for_backward(a, b)


def _gemm_backward(ctx, grad):
    a, b = ctx.saved_tensors
    grad_a = _ops.gemm.default(grad, b.t()) if ctx.needs_input_grad[0] else None
    grad_b = _ops.gemm.default(a.t(), grad) if ctx.needs_input_grad[1] else None
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
        grad_x = _ops.gemm.default(g2, weight).reshape(x.shape)          # (M,N) @ (N,K)
    if ctx.needs_input_grad[1]:
        grad_w = _ops.gemm.default(g2.t(), x.reshape(-1, k))             # (N,M) @ (M,K)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_b = g2.sum(0)
    return grad_x, grad_w, grad_b


torch.library.register_autograd("smallmind::linear", _linear_backward,
                                setup_context=_linear_setup_context)
