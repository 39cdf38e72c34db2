"""Causal self-attention, in every form the switches select.

Shapes: q (B, nh, Tq, hs); k, v (B, nh, Tk, hs). Query row i sits at absolute position
`q_offset + i` and attends keys 0..q_offset + i (q_offset > 0 when decoding against a KV
cache). Scores of masked (future) keys are -inf, except where the custom softmax is used:
it reads only each row's valid length, so masking would be wasted work.

Each form comes twice:
- allocating (`attention_scores_naive`, `softmax_torch`, ...): returns fresh tensors and
  supports autograd (phase 0, reference, training);
- into a buffer (`*_into`): writes into preallocated buffers of the workspace `ws` (see
  workspace.py), for inference.
The tables SCORES, SOFTMAX, VALUES and FUSED map a switch's form to its (allocating, into)
pair; `resolve(opt)` composes them once into the two functions a phase runs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import ops
from .labels import region


# ---- bottleneck 1: attention scores -------------------------------------------------------

def attention_scores_naive(q, k, q_offset, future_mask=None):
    """The seed's baseline: one dot product per (query i, key j <= i), all heads at once.
    Future keys stay -inf, so it needs no mask."""
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


def scores_into_naive(q, k, q_offset, future_mask, scores, ws):
    scores.copy_(attention_scores_naive(q, k, q_offset))


def scores_into_batched(q, k, q_offset, future_mask, scores, ws):
    B, nh, Tq, hs = q.shape
    Tk = k.size(2)
    q_heads = ws.take("attention.q", B, nh, Tq, hs).copy_(q)  # head-major for bmm
    # beta=0 ignores the buffer's old content; the scale rides in alpha (no extra pass).
    torch.baddbmm(scores.view(B * nh, Tq, Tk), q_heads.view(B * nh, Tq, hs),
                  k.reshape(B * nh, Tk, hs).transpose(1, 2), beta=0.0,
                  alpha=1.0 / math.sqrt(hs), out=scores.view(B * nh, Tq, Tk))
    if future_mask is not None:
        scores.masked_fill_(future_mask[q_offset:q_offset + Tq, :Tk], float("-inf"))


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
    return ops.causal_softmax(scores, q_offset)


def softmax_into_naive(scores, q_offset, ws):
    """The same three passes, in place."""
    row_stat = ws.take("attention.row_stat", *scores.shape[:-1], 1)
    torch.amax(scores, dim=-1, keepdim=True, out=row_stat)
    scores.sub_(row_stat).exp_()
    torch.sum(scores, dim=-1, keepdim=True, out=row_stat)
    scores.div_(row_stat)


def softmax_into_torch(scores, q_offset, ws):
    torch.softmax(scores, dim=-1, out=scores)


def softmax_into_custom(scores, q_offset, ws):
    ops.causal_softmax_(scores, q_offset)


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


def values_into_naive(att, v, q_offset, out, ws):
    out.copy_(attention_values_naive(att, v, q_offset))


def values_into_batched(att, v, q_offset, out, ws):
    B, nh, Tq, Tk = att.shape
    hs = v.size(-1)
    y = ws.take("attention.y", B, nh, Tq, hs)
    torch.bmm(att.view(B * nh, Tq, Tk), v.reshape(B * nh, Tk, hs), out=y.view(B * nh, Tq, hs))
    out.copy_(y)


SCORES = {"naive": (attention_scores_naive, scores_into_naive),
          "batched": (attention_scores_batched, scores_into_batched)}
SOFTMAX = {"naive": (softmax_naive, softmax_into_naive),
           "torch": (softmax_torch, softmax_into_torch),
           "custom": (softmax_custom, softmax_into_custom)}
VALUES = {"naive": (attention_values_naive, values_into_naive),
          "batched": (attention_values_batched, values_into_batched)}


# ---- fused forms (beyond the seed): scores, softmax and values in one call ------------------

def attention_sdpa(q, k, v, q_offset, future_mask):
    Tq, Tk = q.size(2), k.size(2)
    if q_offset == 0 and Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if Tq == 1:  # a decode step sees every cached key
        return F.scaled_dot_product_attention(q, k, v)
    allowed = ~future_mask[q_offset:q_offset + Tq, :Tk]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def attention_sdpa_into(q, k, v, q_offset, future_mask, out, ws):
    out.copy_(attention_sdpa(q, k, v, q_offset, future_mask))  # SDPA has no out= variant


def attention_custom(q, k, v, q_offset, future_mask):
    return ops.attention(q, k, v, q_offset)


def attention_custom_into(q, k, v, q_offset, future_mask, out, ws):
    ops.attention(q, k, v, q_offset, out=out)


FUSED = {"sdpa": (attention_sdpa, attention_sdpa_into),
         "custom": (attention_custom, attention_custom_into)}


# ---- the forms of one phase, composed once ---------------------------------------------------

def resolve(opt) -> tuple:
    """(attention, attention_into) for `opt`, with the profiler labels:
    attention(q, k, v, q_offset, future_mask) -> (B, nh, Tq, hs), allocating;
    attention_into(q, k, v, q_offset, future_mask, out, ws) -> out, into buffers."""
    if opt.fused_attention != "off":
        fused, fused_into = FUSED[opt.fused_attention]

        def attention(q, k, v, q_offset, future_mask):
            with region("attention_fused"):
                return fused(q, k, v, q_offset, future_mask)

        def attention_into(q, k, v, q_offset, future_mask, out, ws):
            with region("attention_fused"):
                fused_into(q, k, v, q_offset, future_mask, out, ws)
            return out

        return attention, attention_into

    scores_fn, scores_into = SCORES[opt.attention_scores]
    softmax_fn, softmax_into = SOFTMAX[opt.softmax]
    values_fn, values_into = VALUES[opt.attention_values]
    # The one cross-switch rule: the custom softmax reads only each row's valid length, so
    # the -inf mask would be wasted work.
    masked = opt.softmax != "custom"

    def attention(q, k, v, q_offset, future_mask):
        mask = future_mask if masked else None
        with region("attention_scores"):
            scores = scores_fn(q, k, q_offset, mask)
        with region("softmax"):
            att = softmax_fn(scores, q_offset)
        with region("attention_values"):
            return values_fn(att, v, q_offset)

    def attention_into(q, k, v, q_offset, future_mask, out, ws):
        B, nh, Tq, _ = q.shape
        scores = ws.take("attention.scores", B, nh, Tq, k.size(2))
        with region("attention_scores"):
            scores_into(q, k, q_offset, future_mask if masked else None, scores, ws)
        with region("softmax"):
            softmax_into(scores, q_offset, ws)
        with region("attention_values"):
            values_into(scores, v, q_offset, out, ws)
        return out

    return attention, attention_into
