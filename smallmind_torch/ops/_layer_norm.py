"""Fused LayerNorm over the last dim (seed bottleneck #6): `torch.ops.smallmind.layer_norm*`.

Kernels in `ops/layer_norm.cpp`. The Python entry point picks the variant:

* gradients needed  -> `layer_norm_with_stats` (saves mean/rstd; C++ `layer_norm_backward`)
* no gradients      -> `layer_norm_inference` (no statistics, no autograd kernel in the path)
* `out=` given      -> `layer_norm_out` (writes into the buffer, allocates nothing)

    layer_norm(x, weight, bias, eps=1e-5, out=None)
    layer_norm_reference(x, weight, bias, eps=1e-5)     = F.layer_norm

`weight` / `bias` may be None (no affine part), as in F.layer_norm.
`torch.ops.smallmind.layer_norm` itself is differentiable too (its backward recomputes mean/rstd).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._build import load

load()  # build / load the C++ extension (cached); raises CustomOpsUnavailable

# OpOverloads (`.default`): calling the OpOverloadPacket resolves the overload in Python on
# every call (~8 us); the overload itself goes straight to the dispatcher.
_ops = torch.ops.smallmind

__all__ = ["layer_norm", "layer_norm_reference"]


_F32 = torch.float32


def _check(x, weight, bias, out, name="layer_norm"):
    """Cheap test of the common case; the full diagnosis only runs when it fails."""
    try:
        if (x.is_cpu and x.dtype is _F32 and x.dim() >= 1
                and (weight is None or (weight.is_cpu and weight.dtype is _F32))
                and (bias is None or (bias.is_cpu and bias.dtype is _F32))
                and (out is None or (out.is_cpu and out.dtype is _F32 and out.shape == x.shape
                                     and out.is_contiguous()))):
            return  # weight / bias shapes: checked in C++ (same clear messages)
    except AttributeError:
        pass
    _diagnose(x, weight, bias, out, name)


def _diagnose(x, weight, bias, out, name):
    for arg, t in (("x", x), ("weight", weight), ("bias", bias), ("out", out)):
        if t is None:
            if arg == "x":
                raise TypeError(f"{name}: x must be a tensor, got None")
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.device.type not in ("cpu", "meta"):
            raise RuntimeError(
                f"{name}: {arg} is on {t.device}, but smallmind ops have only a CPU kernel; move "
                "it to the CPU or use layer_norm_reference")
        if t.dtype != torch.float32:
            raise RuntimeError(f"{name}: {arg} must be float32, got {t.dtype}")
    if x.dim() < 1:
        raise RuntimeError(f"{name}: x must have at least 1 dim (normalized over the last), got a scalar")
    c = x.shape[-1]
    for arg, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (c,):
            raise RuntimeError(
                f"{name}: {arg} must have shape ({c},) (the last dim of x {tuple(x.shape)}), got "
                f"{tuple(t.shape)}")
    if out is not None:
        if tuple(out.shape) != tuple(x.shape):
            raise RuntimeError(
                f"{name}: out must have the shape of x {tuple(x.shape)}, got {tuple(out.shape)}")
        if not out.is_contiguous():
            raise RuntimeError(f"{name}: out must be contiguous, got strides {out.stride()}")


def _needs_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
               eps: float = 1e-5, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """LayerNorm over the last dim of x (float32, CPU), fused and vectorized."""
    _check(x, weight, bias, out)
    eps = float(eps)
    if out is not None:
        if _needs_grad(x, weight, bias):
            raise RuntimeError(
                "layer_norm: out= does not support autograd (like torch's out= functions); call "
                "without out= when gradients are needed, or under torch.no_grad()")
        _ops.layer_norm_out.default(x, weight, bias, eps, out)
        return out
    if _needs_grad(x, weight, bias):
        return _ops.layer_norm_with_stats.default(x, weight, bias, eps)[0]
    return _ops.layer_norm_inference.default(x, weight, bias, eps)


def layer_norm_reference(x: torch.Tensor, weight: Optional[torch.Tensor],
                         bias: Optional[torch.Tensor], eps: float = 1e-5) -> torch.Tensor:
    """Plain PyTorch: F.layer_norm over the last dim."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


# ---- fakes (shapes only; used by torch.compile / FakeTensor) ----

@torch.library.register_fake("smallmind::layer_norm")
def _layer_norm_fake(x, weight, bias, eps=1e-5):
    return x.new_empty(x.shape)


@torch.library.register_fake("smallmind::layer_norm_inference")
def _layer_norm_inference_fake(x, weight, bias, eps=1e-5):
    return x.new_empty(x.shape)


@torch.library.register_fake("smallmind::layer_norm_with_stats")
def _layer_norm_with_stats_fake(x, weight, bias, eps=1e-5):
    stat = x.shape[:-1]
    return x.new_empty(x.shape), x.new_empty(stat), x.new_empty(stat)


@torch.library.register_fake("smallmind::layer_norm_out")
def _layer_norm_out_fake(x, weight, bias, eps, out):
    return None


@torch.library.register_fake("smallmind::layer_norm_backward")
def _layer_norm_backward_fake(grad_out, x, weight, mean, rstd, eps):
    c = x.shape[-1]
    return x.new_empty(x.shape), x.new_empty((c,)), x.new_empty((c,))


# ---- autograd ----

def _grads(ctx, grad_out, mean, rstd):
    x, weight = ctx.saved_tensors[:2]
    weight = weight if ctx.has_weight else None
    dx, dw, db = _ops.layer_norm_backward.default(
        grad_out, x, weight, mean, rstd, ctx.eps)
    needs = ctx.needs_input_grad
    return (dx if needs[0] else None,
            dw if (ctx.has_weight and needs[1]) else None,
            db if (ctx.has_bias and needs[2]) else None,
            None)


def _setup_with_stats(ctx, inputs, output):
    x, weight, bias, eps = inputs
    _, mean, rstd = output
    ctx.has_weight = weight is not None
    ctx.has_bias = bias is not None
    ctx.eps = eps
    ctx.save_for_backward(x, weight if weight is not None else x, mean, rstd)


def _backward_with_stats(ctx, grad_out, _grad_mean, _grad_rstd):
    _, _, mean, rstd = ctx.saved_tensors
    return _grads(ctx, grad_out, mean, rstd)


def _setup_plain(ctx, inputs, output):
    x, weight, bias, eps = inputs
    ctx.has_weight = weight is not None
    ctx.has_bias = bias is not None
    ctx.eps = eps
    ctx.save_for_backward(x, weight if weight is not None else x)


def _backward_plain(ctx, grad_out):
    # no saved statistics: the C++ backward recomputes mean / rstd per row
    return _grads(ctx, grad_out, None, None)


torch.library.register_autograd("smallmind::layer_norm_with_stats", _backward_with_stats,
                                setup_context=_setup_with_stats)
torch.library.register_autograd("smallmind::layer_norm", _backward_plain,
                                setup_context=_setup_plain)
