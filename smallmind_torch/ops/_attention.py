"""Fused causal attention on the CPU: `torch.ops.smallmind.attention[_out]`.

Kernel in `ops/attention.cpp`: online softmax (flash-attention style), one query row per task,
keys walked in blocks with a running max / sum; the Tq x Tk score matrix is never built.
k / v may be strided views of a KV cache (`k_cache[:B, :, :Tk]`), read in place; `out=` may be
a strided view too (e.g. `buf.view(B, T, nh, hs).transpose(1, 2)` of a (B, T, C) buffer).

    attention(q, k, v, q_offset=0, out=None)      q (B, nh, Tq, hs), k/v (B, nh, Tk, hs)
    attention_reference(q, k, v, q_offset=0)      matmul, mask, softmax, matmul

Query i sits at absolute position q_offset + i and attends keys 0..q_offset+i
(prefill: Tq = Tk, q_offset = 0; decode: Tq = 1, q_offset = Tk - 1). Scale 1/sqrt(hs).
Autograd: C++ backward (`attention_backward`) that recomputes the probabilities per row.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ._build import load

load()  # build / load the C++ extension (cached); raises CustomOpsUnavailable

# OpOverloads (`.default`): calling the OpOverloadPacket resolves the overload in Python on
# every call (~8 us); the overload itself goes straight to the dispatcher.
_ops = torch.ops.smallmind

__all__ = ["attention", "attention_reference"]


_F32 = torch.float32


def _check(q, k, v, q_offset, out, name="attention"):
    """Cheap test of the common case; the full diagnosis only runs when it fails."""
    try:
        if (q.is_cpu and k.is_cpu and v.is_cpu and q.dtype is _F32 and k.dtype is _F32
                and v.dtype is _F32 and q.dim() == 4 and k.dim() == 4
                and type(q_offset) is int and 0 <= q_offset
                and q_offset + q.shape[2] <= k.shape[2]
                and (out is None or (out.is_cpu and out.dtype is _F32))):
            return  # remaining shape checks: in C++ (TORCH_CHECK, same clear messages)
    except AttributeError:
        pass
    _diagnose(q, k, v, q_offset, out, name)


def _diagnose(q, k, v, q_offset, out, name):
    for arg, t in (("q", q), ("k", k), ("v", v), ("out", out)):
        if t is None and arg == "out":
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type not in ("cpu", "meta"):
            raise RuntimeError(
                f"{name}: {arg} is on {t.device}, but smallmind ops have only a CPU kernel; move "
                "it to the CPU or use F.scaled_dot_product_attention / attention_reference")
        if t.dtype != torch.float32:
            raise RuntimeError(f"{name}: {arg} must be float32, got {t.dtype}")
        if t.dim() != 4:
            raise RuntimeError(
                f"{name}: {arg} must be 4-D (B, nh, T, hs), got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise RuntimeError(
            f"{name}: k and v must have the same shape (B, nh, Tk, hs), got {tuple(k.shape)} "
            f"and {tuple(v.shape)}")
    b, nh, tq, hs = q.shape
    if (k.shape[0], k.shape[1], k.shape[3]) != (b, nh, hs):
        raise RuntimeError(
            f"{name}: q (B, nh, Tq, hs) and k/v (B, nh, Tk, hs) must agree on B, nh, hs, got "
            f"q {tuple(q.shape)} and k {tuple(k.shape)}")
    if not isinstance(q_offset, (int, torch.SymInt)) or isinstance(q_offset, bool):
        raise TypeError(f"{name}: q_offset must be an int, got {type(q_offset).__name__}")
    tk = k.shape[2]
    if q_offset < 0 or q_offset + tq > tk:
        raise ValueError(
            f"{name}: q_offset must satisfy 0 <= q_offset and q_offset + Tq <= Tk (query i "
            f"attends keys 0..q_offset+i), got q_offset={q_offset}, Tq={tq}, Tk={tk}")
    if out is not None and tuple(out.shape) != (b, nh, tq, hs):
        raise RuntimeError(
            f"{name}: out must have shape (B, nh, Tq, hs) = {(b, nh, tq, hs)}, got "
            f"{tuple(out.shape)}")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_offset: int = 0,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused causal attention softmax(q k^T / sqrt(hs), causal) v, without the score matrix."""
    _check(q, k, v, q_offset, out)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if out is None:
        if needs_grad:
            return _ops.attention.default(q, k, v, q_offset)
        # same kernel, no Python autograd kernel in the dispatch path (~15 us cheaper per call)
        return _ops.attention_inference.default(q, k, v, q_offset)
    if needs_grad:
        raise RuntimeError(
            "attention: out= does not support autograd; call without out= when gradients are "
            "needed, or under torch.no_grad()")
    _ops.attention_out.default(q, k, v, q_offset, out)
    return out


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        q_offset: int = 0) -> torch.Tensor:
    """Plain PyTorch: (q @ k^T) * scale, causal mask with -inf, softmax, @ v."""
    tq, tk, hs = q.shape[-2], k.shape[-2], q.shape[-1]
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
    i = torch.arange(tq, device=q.device).unsqueeze(1)
    j = torch.arange(tk, device=q.device).unsqueeze(0)
    att = att.masked_fill(j > (i + q_offset), float("-inf"))
    return torch.softmax(att, dim=-1) @ v


@torch.library.register_fake("smallmind::attention")
def _attention_fake(q, k, v, q_offset=0):
    return q.new_empty(q.shape)


@torch.library.register_fake("smallmind::attention_inference")
def _attention_inference_fake(q, k, v, q_offset=0):
    return q.new_empty(q.shape)


@torch.library.register_fake("smallmind::attention_out")
def _attention_out_fake(q, k, v, q_offset, out):
    return None


@torch.library.register_fake("smallmind::attention_backward")
def _attention_backward_fake(grad_out, q, k, v, q_offset):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, q_offset = inputs
    ctx.q_offset = q_offset
    ctx.save_for_backward(q, k, v)


def _backward(ctx, grad_out):
    q, k, v = ctx.saved_tensors
    dq, dk, dv = _ops.attention_backward.default(grad_out, q, k, v, ctx.q_offset)
    needs = ctx.needs_input_grad
    return (dq if needs[0] else None, dk if needs[1] else None, dv if needs[2] else None, None)


torch.library.register_autograd("smallmind::attention", _backward, setup_context=_setup_context)
