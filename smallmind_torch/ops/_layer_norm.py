"""Bindings of csrc/layer_norm.cpp: fused LayerNorm over the last dim (seed bottleneck #6)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._build import load
from ._common import CALL_ERRORS, diagnose, fake_check, fake_eps, fake_out, fake_tensor, \
    needs_grad

load()  # build / load the C++ extension (cached); raises CustomOpsUnavailable

_layer_norm = torch.ops.smallmind.layer_norm.default
_layer_norm_inference = torch.ops.smallmind.layer_norm_inference.default
_layer_norm_with_stats = torch.ops.smallmind.layer_norm_with_stats.default
_layer_norm_out = torch.ops.smallmind.layer_norm_out.default
_layer_norm_backward = torch.ops.smallmind.layer_norm_backward.default

__all__ = ["layer_norm", "layer_norm_reference"]


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
               eps: float = 1e-5, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.layer_norm over the last dim of x; weight / bias may be None; with `out`, written there."""
    try:
        grad = needs_grad(x, weight, bias)
        if out is None:
            if grad:  # the training form saves mean / rstd for the backward
                return _layer_norm_with_stats(x, weight, bias, eps)[0]
            return _layer_norm_inference(x, weight, bias, eps)
        if grad:
            raise RuntimeError(
                "smallmind::layer_norm: out= does not support autograd (like torch's out= "
                "functions); call without out= when gradients are needed, or under "
                "torch.no_grad()")
        _layer_norm_out(x, weight, bias, eps, out)
        return out
    except CALL_ERRORS as exc:
        diagnose("layer_norm", exc, tensors=(("x", x),),
                 optional=(("weight", weight), ("bias", bias), ("out", out)))
        raise


def layer_norm_reference(x: torch.Tensor, weight: Optional[torch.Tensor],
                         bias: Optional[torch.Tensor], eps: float = 1e-5) -> torch.Tensor:
    """Plain PyTorch: F.layer_norm over the last dim."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


# ---- fakes: the results' shapes, refusing what check_inputs (layer_norm.cpp) refuses ----

def _check_inputs(op, x, weight, bias, eps):
    fake_tensor(op, "x", x, min_dim=1)
    fake_eps(op, eps)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            fake_tensor(op, name, t, dim=1)
            fake_check(op, f"'{name}'", t.shape[0] == x.shape[-1])


@torch.library.register_fake("smallmind::layer_norm")
def _layer_norm_fake(x, weight, bias, eps=1e-5):
    _check_inputs("layer_norm", x, weight, bias, eps)
    return x.new_empty(x.shape)


@torch.library.register_fake("smallmind::layer_norm_inference")
def _layer_norm_inference_fake(x, weight, bias, eps=1e-5):
    _check_inputs("layer_norm", x, weight, bias, eps)  # the same kernel as layer_norm
    return x.new_empty(x.shape)


@torch.library.register_fake("smallmind::layer_norm_with_stats")
def _layer_norm_with_stats_fake(x, weight, bias, eps=1e-5):
    _check_inputs("layer_norm_with_stats", x, weight, bias, eps)
    stat = x.shape[:-1]
    return x.new_empty(x.shape), x.new_empty(stat), x.new_empty(stat)


@torch.library.register_fake("smallmind::layer_norm_out")
def _layer_norm_out_fake(x, weight, bias, eps, out):
    _check_inputs("layer_norm_out", x, weight, bias, eps)
    fake_out("layer_norm_out", out, x.shape)


@torch.library.register_fake("smallmind::layer_norm_backward")
def _layer_norm_backward_fake(grad_out, x, weight, mean, rstd, eps):
    op = "layer_norm_backward"
    _check_inputs(op, x, weight, None, eps)
    fake_tensor(op, "grad_out", grad_out)
    fake_check(op, "'grad_out'", grad_out.shape == x.shape)
    fake_check(op, "'mean' and 'rstd'", (mean is None) == (rstd is None))
    if mean is not None:
        fake_tensor(op, "mean", mean)
        fake_tensor(op, "rstd", rstd)
        rows = x.numel() // x.shape[-1] if x.shape[-1] != 0 else 0
        fake_check(op, "'mean' and 'rstd'", mean.numel() == rows and rstd.numel() == rows)
    c = x.shape[-1]
    return x.new_empty(x.shape), x.new_empty((c,)), x.new_empty((c,))


# ---- autograd: the C++ backward, with saved statistics or recomputing them ----

def _grads(ctx, grad_out, mean, rstd):
    x, weight = ctx.saved_tensors[:2]
    weight = weight if ctx.has_weight else None
    dx, dw, db = _layer_norm_backward(grad_out, x, weight, mean, rstd, ctx.eps)
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
