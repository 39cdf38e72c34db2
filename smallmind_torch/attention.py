"""Causal self-attention, in every form the switches select.

Shapes: q (B, nh, Tq, hs); k, v (B, nh, Tk, hs). Query row i sits at absolute position
`q_offset + i` and attends keys 0..q_offset + i (q_offset > 0 when decoding against a KV
cache). Scores of masked (future) keys are -inf, except where the custom softmax is used:
it reads only each row's valid length, so masking would be wasted work.

Two families of functions:
- allocating forms (`attention_scores_naive`, `..._batched`, `softmax_*`, `attention_values_*`)
  return fresh tensors and support autograd: phase 0, reference, training;
- `attention_into(..., out, ws)`: the workspace form, writing every intermediate into
  preallocated buffers (see workspace.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .labels import region


# ---- bottleneck 1: attention scores -------------------------------------------------------

def attention_scores_naive(q, k, q_offset):
    """The seed's baseline: one dot product per (query i, key j <= i), all heads at once."""
    B, nh, Tq, hs = q.shape
    scale = 1.0 / math.sqrt(hs)
    scores = torch.full((B, nh, Tq, k.size(2)), float("-inf"), dtype=q.dtype, device=q.device)
    for i in range(Tq):
        for j in range(q_offset + i + 1):
            scores[:, :, i, j] = (q[:, :, i, :] * k[:, :, j, :]).sum(-1) * scale
    return scores  # (B, nh, Tq, Tk)


def attention_scores_batched(q, k, q_offset, future_mask=None):
    """One batched matmul for all heads and batch rows, the scale folded into q."""
    scale = 1.0 / math.sqrt(q.size(-1))
    scores = (q * scale) @ k.transpose(-2, -1)  # (B, nh, Tq, Tk)
    if future_mask is not None:
        Tq, Tk = q.size(2), k.size(2)
        scores = scores.masked_fill(future_mask[q_offset:q_offset + Tq, :Tk], float("-inf"))
    return scores


# ---- bottleneck 4: softmax over the key axis ------------------------------------------------

def softmax_naive(scores, q_offset):
    """The seed's three separate passes, each producing a new tensor."""
    row_max = scores.amax(dim=-1, keepdim=True)          # pass 1: max
    exps = torch.exp(scores - row_max)                    # pass 2: exp ...
    row_sum = exps.sum(dim=-1, keepdim=True)              # ... and sum
    return exps / row_sum                                 # pass 3: scale


def softmax_torch(scores, q_offset):
    return F.softmax(scores, dim=-1)


def softmax_custom(scores, q_offset):
    from . import ops

    return ops.causal_softmax(scores, q_offset)


# ---- bottleneck 2: value aggregation --------------------------------------------------------

def attention_values_naive(att, v, q_offset):
    """The seed's baseline: one sum over j per (row i, dim d), all heads at once."""
    B, nh, Tq, _ = att.shape
    hs = v.size(-1)
    y = torch.empty(B, nh, Tq, hs, dtype=v.dtype, device=v.device)
    for i in range(Tq):
        n = q_offset + i + 1  # keys this row can see
        for d in range(hs):
            y[:, :, i, d] = (att[:, :, i, :n] * v[:, :, :n, d]).sum(-1)
    return y  # (B, nh, Tq, hs)


def attention_values_batched(att, v, q_offset):
    return att @ v  # (B, nh, Tq, hs)


SCORES = {"naive": attention_scores_naive, "batched": attention_scores_batched}
SOFTMAX = {"naive": softmax_naive, "torch": softmax_torch, "custom": softmax_custom}
VALUES = {"naive": attention_values_naive, "batched": attention_values_batched}


# ---- fused forms (beyond the seed) ----------------------------------------------------------

def attention_sdpa(q, k, v, q_offset, future_mask):
    Tq, Tk = q.size(2), k.size(2)
    if q_offset == 0 and Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if Tq == 1:  # a decode step sees every cached key
        return F.scaled_dot_product_attention(q, k, v)
    allowed = ~future_mask[q_offset:q_offset + Tq, :Tk]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def attention_custom(q, k, v, q_offset, future_mask, out=None):
    from . import ops

    return ops.attention(q, k, v, q_offset, out=out)


FUSED = {"sdpa": attention_sdpa, "custom": attention_custom}


def causal_attention(opt, q, k, v, q_offset, future_mask):
    """Allocating attention: (B, nh, Tq, hs) from q, k, v in the forms `opt` selects."""
    if opt.fused_attention != "off":
        with region("attention_fused"):
            return FUSED[opt.fused_attention](q, k, v, q_offset, future_mask)
    mask = None if opt.softmax == "custom" else future_mask
    with region("attention_scores"):
        if opt.attention_scores == "naive":
            scores = attention_scores_naive(q, k, q_offset)
        else:
            scores = attention_scores_batched(q, k, q_offset, mask)
    with region("softmax"):
        att = SOFTMAX[opt.softmax](scores, q_offset)
    with region("attention_values"):
        return VALUES[opt.attention_values](att, v, q_offset)


# ---- the workspace form: every intermediate in a preallocated buffer -------------------------

def attention_into(opt, q, k, v, q_offset, future_mask, out, ws):
    """Write causal attention of q, k, v into `out` (B, nh, Tq, hs), allocating nothing new
    for the batched/fused-custom forms once `ws` has grown to the largest shape."""
    B, nh, Tq, hs = q.shape
    Tk = k.size(2)
    if opt.fused_attention == "custom":
        with region("attention_fused"):
            attention_custom(q, k, v, q_offset, future_mask, out=out)
        return out
    if opt.fused_attention == "sdpa":  # SDPA has no out= variant: one output tensor per call
        with region("attention_fused"):
            out.copy_(attention_sdpa(q, k, v, q_offset, future_mask))
        return out
    scores = ws.take("attention.scores", B, nh, Tq, Tk)
    with region("attention_scores"):
        if opt.attention_scores == "naive":
            scores.copy_(attention_scores_naive(q, k, q_offset))
        else:
            q_heads = ws.take("attention.q", B, nh, Tq, hs).copy_(q)  # head-major for bmm
            # beta=0 ignores the buffer's old content; the scale rides in alpha (no extra pass).
            torch.baddbmm(scores.view(B * nh, Tq, Tk), q_heads.view(B * nh, Tq, hs),
                          k.reshape(B * nh, Tk, hs).transpose(1, 2), beta=0.0,
                          alpha=1.0 / math.sqrt(hs), out=scores.view(B * nh, Tq, Tk))
            if opt.softmax != "custom":
                scores.masked_fill_(future_mask[q_offset:q_offset + Tq, :Tk], float("-inf"))
    with region("softmax"):
        if opt.softmax == "naive":  # the same three passes, in place
            row_stat = ws.take("attention.row_stat", B, nh, Tq, 1)
            torch.amax(scores, dim=-1, keepdim=True, out=row_stat)
            scores.sub_(row_stat).exp_()
            torch.sum(scores, dim=-1, keepdim=True, out=row_stat)
            scores.div_(row_stat)
        elif opt.softmax == "torch":
            torch.softmax(scores, dim=-1, out=scores)
        else:
            from . import ops

            ops.causal_softmax_(scores, q_offset)
    with region("attention_values"):
        if opt.attention_values == "naive":
            out.copy_(attention_values_naive(scores, v, q_offset))
        else:
            y = ws.take("attention.y", B, nh, Tq, hs)
            torch.bmm(scores.view(B * nh, Tq, Tk), v.reshape(B * nh, Tk, hs),
                      out=y.view(B * nh, Tq, hs))
            out.copy_(y)
    return out
