"""Bindings of csrc/attention.cpp: fused causal attention (online softmax, no score matrix)."""
from __future__ import annotations

import math
from typing import Optional

import torch

from ._build import load
from ._common import CALL_ERRORS, check_int, diagnose, fake_check, fake_q_offset, fake_tensor, needs_grad

load()  # build / load the C++ extension (cached); raises CustomOpsUnavailable

_attention = torch.ops.smallmind.attention.default
_attention_inference = torch.ops.smallmind.attention_inference.default
_attention_out = torch.ops.smallmind.attention_out.default
_attention_backward = torch.ops.smallmind.attention_backward.default

__all__ = ["attention", "attention_reference"]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_offset: int = 0,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs), causal from q_offset) v; with `out`, written there."""
    if type(q_offset) is not int:
        check_int("attention", "q_offset", q_offset)
    try:
        grad = needs_grad(q, k, v)
        if out is None:
            return (_attention if grad else _attention_inference)(q, k, v, q_offset)
        if grad:
            raise RuntimeError(
                "smallmind::attention: out= does not support autograd; call without out= when "
                "gradients are needed, or under torch.no_grad()")
        _attention_out(q, k, v, q_offset, out)
        return out
    except CALL_ERRORS as exc:
        diagnose("attention", exc, tensors=(("q", q), ("k", k), ("v", v)),
                 optional=(("out", out),))
        raise


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        q_offset: int = 0) -> torch.Tensor:
    """Plain PyTorch: (q @ k^T) * scale, causal mask with -inf, softmax, @ v."""
    tq, tk, hs = q.shape[-2], k.shape[-2], q.shape[-1]
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
    i = torch.arange(tq, device=q.device).unsqueeze(1)
    j = torch.arange(tk, device=q.device).unsqueeze(0)
    att = att.masked_fill(j > (i + q_offset), float("-inf"))
    return torch.softmax(att, dim=-1) @ v


# ---- fakes: the results' shapes, refusing what check_qkv (attention.cpp) refuses ----

def _check_qkv(op, q, k, v, q_offset):
    for name, t in (("q", q), ("k", k), ("v", v)):
        fake_tensor(op, name, t, dim=4)
    fake_check(op, "sizes", k.shape == v.shape and q.shape[:2] == k.shape[:2]
               and q.shape[3] == k.shape[3])
    fake_q_offset(op, q_offset, q.shape[2], k.shape[2])


@torch.library.register_fake("smallmind::attention")
def _attention_fake(q, k, v, q_offset=0):
    _check_qkv("attention", q, k, v, q_offset)
    return q.new_empty(q.shape)


@torch.library.register_fake("smallmind::attention_inference")
def _attention_inference_fake(q, k, v, q_offset=0):
    return _attention_fake(q, k, v, q_offset)


@torch.library.register_fake("smallmind::attention_out")
def _attention_out_fake(q, k, v, q_offset, out):
    _check_qkv("attention_out", q, k, v, q_offset)
    fake_tensor("attention_out", "out", out)
    fake_check("attention_out", "'out'", out.shape == q.shape)


@torch.library.register_fake("smallmind::attention_backward")
def _attention_backward_fake(grad_out, q, k, v, q_offset):
    _check_qkv("attention_backward", q, k, v, q_offset)
    fake_tensor("attention_backward", "grad_out", grad_out)
    fake_check("attention_backward", "'grad_out'", grad_out.shape == q.shape)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


# ---- autograd: C++ backward that recomputes the probabilities row by row ----

def _setup_context(ctx, inputs, output):
    q, k, v, q_offset = inputs
    ctx.q_offset = q_offset
    ctx.save_for_backward(q, k, v)


def _backward(ctx, grad_out):
    q, k, v = ctx.saved_tensors
    dq, dk, dv = _attention_backward(grad_out, q, k, v, ctx.q_offset)
    needs = ctx.needs_input_grad
    return (dq if needs[0] else None, dk if needs[1] else None, dv if needs[2] else None, None)


torch.library.register_autograd("smallmind::attention", _backward, setup_context=_setup_context)
