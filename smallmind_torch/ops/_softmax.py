"""Fused causal softmax (seed bottleneck #4): `torch.ops.smallmind.causal_softmax[_]`.

Kernel in `ops/softmax.cpp`: one pass per row (max, exp + sum, scale over the valid part
`L_i = q_offset + i + 1`, zeros in the masked tail; the tail of the input is never read).

    causal_softmax(scores, q_offset=0)    -> new tensor (differentiable; calls the op
                                             `causal_softmax_inference` when no grad is needed)
    causal_softmax_(scores, q_offset=0)   -> scores, overwritten in place (inference)
    causal_softmax_reference(scores, q_offset=0)   plain PyTorch: masked_fill(-inf) + softmax
"""
from __future__ import annotations

import torch

from ._build import load

load()  # build / load the C++ extension (cached); raises CustomOpsUnavailable

# OpOverloads (`.default`): calling the OpOverloadPacket resolves the overload in Python on
# every call (~8 us); the overload itself goes straight to the dispatcher.
_ops = torch.ops.smallmind

__all__ = ["causal_softmax", "causal_softmax_", "causal_softmax_reference"]

_OP = "smallmind::causal_softmax"


_F32 = torch.float32


def _check(scores: torch.Tensor, q_offset: int, name: str) -> None:
    """Cheap test of the common case; the full diagnosis only runs when it fails."""
    try:
        if (scores.is_cpu and scores.dtype is _F32 and scores.dim() >= 2
                and type(q_offset) is int and 0 <= q_offset
                and q_offset + scores.shape[-2] <= scores.shape[-1]):
            return
    except AttributeError:
        pass
    _diagnose(scores, q_offset, name)


def _diagnose(scores: torch.Tensor, q_offset: int, name: str) -> None:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{name}: scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.device.type not in ("cpu", "meta"):
        raise RuntimeError(
            f"{name}: scores is on {scores.device}, but smallmind ops have only a CPU kernel; "
            "move it to the CPU or use causal_softmax_reference")
    if scores.dtype != torch.float32:
        raise RuntimeError(f"{name}: scores must be float32, got {scores.dtype}")
    if scores.dim() < 2:
        raise RuntimeError(
            f"{name}: scores must have shape (..., Tq, Tk) with at least 2 dims, got "
            f"{tuple(scores.shape)}")
    tq, tk = scores.shape[-2], scores.shape[-1]
    if not isinstance(q_offset, (int, torch.SymInt)) or isinstance(q_offset, bool):
        raise TypeError(f"{name}: q_offset must be an int, got {type(q_offset).__name__}")
    if q_offset < 0 or q_offset + tq > tk:
        raise ValueError(
            f"{name}: q_offset must satisfy 0 <= q_offset and q_offset + Tq <= Tk, got "
            f"q_offset={q_offset}, Tq={tq}, Tk={tk}")


def causal_softmax(scores: torch.Tensor, q_offset: int = 0) -> torch.Tensor:
    """Softmax of each row i over keys 0..q_offset+i; zeros beyond. Returns a new tensor."""
    _check(scores, q_offset, "causal_softmax")
    if torch.is_grad_enabled() and scores.requires_grad:
        return _ops.causal_softmax.default(scores, q_offset)
    # same kernel, no Python autograd kernel in the dispatch path (~15 us cheaper per call)
    return _ops.causal_softmax_inference.default(scores, q_offset)


def causal_softmax_(scores: torch.Tensor, q_offset: int = 0) -> torch.Tensor:
    """In-place `causal_softmax`: overwrites and returns `scores` (no autograd)."""
    _check(scores, q_offset, "causal_softmax_")
    if torch.is_grad_enabled() and scores.requires_grad:
        raise RuntimeError(
            "causal_softmax_: in-place form has no autograd; use causal_softmax(scores) when "
            "gradients are needed (or run under torch.no_grad())")
    _ops.causal_softmax_.default(scores, q_offset)
    return scores


def causal_softmax_reference(scores: torch.Tensor, q_offset: int = 0) -> torch.Tensor:
    """Plain PyTorch: mask keys j > q_offset + i with -inf, then torch.softmax."""
    tq, tk = scores.shape[-2], scores.shape[-1]
    i = torch.arange(tq, device=scores.device).unsqueeze(1)
    j = torch.arange(tk, device=scores.device).unsqueeze(0)
    mask = j > (i + q_offset)
    return torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)


@torch.library.register_fake("smallmind::causal_softmax")
def _causal_softmax_fake(scores, q_offset=0):
    return scores.new_empty(scores.shape)


@torch.library.register_fake("smallmind::causal_softmax_inference")
def _causal_softmax_inference_fake(scores, q_offset=0):
    return scores.new_empty(scores.shape)


@torch.library.register_fake("smallmind::causal_softmax_")
def _causal_softmax__fake(scores, q_offset=0):
    return None


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output)


def _backward(ctx, grad):
    (y,) = ctx.saved_tensors
    # dL/dx = y * (g - sum_j g_j y_j); masked entries have y = 0, so their grad is 0.
    return y * (grad - (grad * y).sum(dim=-1, keepdim=True)), None


torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)
