"""Bindings of csrc/softmax.cpp: the fused causal softmax (seed bottleneck #4)."""
from __future__ import annotations

import torch

from ._build import load
from ._common import CALL_ERRORS, check_int, diagnose, fake_q_offset, fake_tensor

load()  # build / load the C++ extension (cached); raises CustomOpsUnavailable

_causal_softmax = torch.ops.smallmind.causal_softmax.default
_causal_softmax_inference = torch.ops.smallmind.causal_softmax_inference.default
_causal_softmax_ = torch.ops.smallmind.causal_softmax_.default

__all__ = ["causal_softmax", "causal_softmax_", "causal_softmax_reference"]


def causal_softmax(scores: torch.Tensor, q_offset: int = 0) -> torch.Tensor:
    """Softmax of row i over keys 0..q_offset+i, zeros beyond, as a new tensor."""
    if type(q_offset) is not int:
        check_int("causal_softmax", "q_offset", q_offset)
    try:
        if torch.is_grad_enabled() and scores.requires_grad:
            return _causal_softmax(scores, q_offset)
        return _causal_softmax_inference(scores, q_offset)
    except CALL_ERRORS as exc:
        diagnose("causal_softmax", exc, tensors=(("scores", scores),))
        raise


def causal_softmax_(scores: torch.Tensor, q_offset: int = 0) -> torch.Tensor:
    """`causal_softmax` in place: overwrites and returns `scores` (no autograd)."""
    if type(q_offset) is not int:
        check_int("causal_softmax_", "q_offset", q_offset)
    try:
        if torch.is_grad_enabled() and scores.requires_grad:
            raise RuntimeError(
                "smallmind::causal_softmax_: the in-place form has no autograd; use "
                "causal_softmax(scores) when gradients are needed (or run under torch.no_grad())")
        _causal_softmax_(scores, q_offset)
        return scores
    except CALL_ERRORS as exc:
        diagnose("causal_softmax_", exc, tensors=(("scores", scores),))
        raise


def causal_softmax_reference(scores: torch.Tensor, q_offset: int = 0) -> torch.Tensor:
    """Plain PyTorch: mask keys j > q_offset + i with -inf, then torch.softmax."""
    tq, tk = scores.shape[-2], scores.shape[-1]
    i = torch.arange(tq, device=scores.device).unsqueeze(1)
    j = torch.arange(tk, device=scores.device).unsqueeze(0)
    mask = j > (i + q_offset)
    return torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)


# ---- fakes: the result's shape, refusing what check_scores (softmax.cpp) refuses ----

def _check_scores(op, scores, q_offset):
    fake_tensor(op, "scores", scores, min_dim=2)
    fake_q_offset(op, q_offset, scores.shape[-2], scores.shape[-1])


@torch.library.register_fake("smallmind::causal_softmax")
def _causal_softmax_fake(scores, q_offset=0):
    _check_scores("causal_softmax", scores, q_offset)
    return scores.new_empty(scores.shape)


@torch.library.register_fake("smallmind::causal_softmax_inference")
def _causal_softmax_inference_fake(scores, q_offset=0):
    return _causal_softmax_fake(scores, q_offset)


@torch.library.register_fake("smallmind::causal_softmax_")
def _causal_softmax__fake(scores, q_offset=0):
    _check_scores("causal_softmax_", scores, q_offset)


# ---- autograd ----

def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output)


def _backward(ctx, grad):
    (y,) = ctx.saved_tensors
    # dL/dx = y * (g - sum_j g_j y_j); masked entries have y = 0, so their grad is 0.
    return y * (grad - (grad * y).sum(dim=-1, keepdim=True)), None


torch.library.register_autograd("smallmind::causal_softmax", _backward,
                                setup_context=_setup_context)
