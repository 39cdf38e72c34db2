"""Fused decode (beyond the seed): a KV-cache decode step of the whole model in one C++ op.

The unit in one file, read top to bottom:
- `BLOCK_PARAMS` / `block_params(block)`: the one place that maps a Block's modules to the
  ops' parameter lists (the ops take them as one `Tensor[]`);
- `decode_block_reference`: one block (the `decode_block_` op) in plain PyTorch, and
  `decode_step_reference`: the whole step (the `decode_step_` op: embeddings, every block,
  ln_f, the tied lm head, the argmax), both in the same step order and with the same names as
  `csrc/decode_kernel.h`;
- `decode_step` / `decode_greedy`: the model's decode step on the op, what the `fused_decode`
  switch selects for one new token per sequence; logits or, for greedy generation, the next
  token ids, views of the model's workspace. `decode_step_q8` / `decode_greedy_q8`: the same
  on `decode_step_q8_` with the int8 weights of the `weights` switch, for "w8a8" with int8
  activations too (`q8_weights`: which weights, in the op's order; quantized again when a
  weight changes).

Why: a decode step through the module path is ~150 small op calls, each paying the dispatcher
and Python, and each matrix-vector product forks and joins the threads; one C++ call per step
pays that once and runs the whole step in one parallel region.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import ops
from .weight_formats import quantize_rows, quantized_weight
from .labels import region

# The ops' parameter order: nanoGPT names, weights in nn.Linear layout (out, in).
BLOCK_PARAMS = ("ln_1.weight", "ln_1.bias",
                "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
                "ln_2.weight", "ln_2.bias",
                "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")


def block_params(block) -> list:
    """The 12 parameters of a model.Block in BLOCK_PARAMS order."""
    return [block.get_parameter(name) for name in BLOCK_PARAMS]


# `decode_step_q8_`'s int8 weights: these four matrices of every block (their BLOCK_PARAMS
# positions), then the lm head
Q8_PARAMS = (2, 4, 8, 10)


def q8_weights(model) -> list:
    """The float weights decode_step_q8_ takes as int8, in its order."""
    return [params[i] for params in model.block_params for i in Q8_PARAMS] + [model.lm_head.weight]


def linear_w8a8_reference(x, w, b=None):
    """F.linear with the rows of x quantized to int8 as the w8a8 kernels do (w: the weight)."""
    q, s = quantize_rows(x)
    return F.linear(q.float() * s[..., None], w, b)


def decode_block_reference(x, params, k_cache, v_cache, pos: int, n_head: int, eps: float,
                           linear=F.linear):
    """Plain PyTorch of `decode_block_`: one new token per sequence, x (B, C) updated in place;
    row `pos` of k_cache / v_cache (maxB, nh, S, hs) written for sequences 0..B-1. `linear`:
    what each of the four matrices runs (linear_w8a8_reference for int8 activations)."""
    (ln_1_w, ln_1_b, c_attn_w, c_attn_b, attn_c_proj_w, attn_c_proj_b,
     ln_2_w, ln_2_b, c_fc_w, c_fc_b, mlp_c_proj_w, mlp_c_proj_b) = params
    B, C = x.shape
    hs = C // n_head
    # attention
    h = F.layer_norm(x, (C,), ln_1_w, ln_1_b, eps)
    q, k, v = linear(h, c_attn_w, c_attn_b).split(C, dim=1)
    k_cache[:B, :, pos] = k.view(B, n_head, hs)
    v_cache[:B, :, pos] = v.view(B, n_head, hs)
    keys, values = k_cache[:B, :, :pos + 1], v_cache[:B, :, :pos + 1]  # (B, nh, pos + 1, hs)
    att = (q.view(B, n_head, 1, hs) @ keys.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, 1, L)
    y = (torch.softmax(att, dim=-1) @ values).view(B, C)
    x.add_(linear(y, attn_c_proj_w, attn_c_proj_b))
    # MLP
    h = F.layer_norm(x, (C,), ln_2_w, ln_2_b, eps)
    fc = F.gelu(linear(h, c_fc_w, c_fc_b), approximate="tanh")
    x.add_(linear(fc, mlp_c_proj_w, mlp_c_proj_b))
    return x


def decode_step_reference(tokens, pos: int, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches,
                          v_caches, n_head: int, eps: float, logits, next_tokens,
                          weights_q8=None, scales_q8=None, int8_activations: bool = False):
    """Plain PyTorch of `decode_step_`: tokens (B,) or (B, 1) at position `pos`; block_params
    12 tensors per block (BLOCK_PARAMS order, block after block); one k and one v cache per
    block, row `pos` written; logits (B, [1,] V) and next_tokens (B, [1]) written in place.
    Returns (logits, next_tokens). With weights_q8 / scales_q8, `decode_step_q8_`: the four
    weight matrices of each block and the lm head are the dequantized int8 ones, and with
    int8_activations their input rows are quantized too (w8a8)."""
    B, C = tokens.size(0), wte.size(1)
    linear = linear_w8a8_reference if int8_activations else F.linear
    head = wte  # the lm head is tied to the token embedding
    if weights_q8 is not None:
        dequantized = [w_q.float() * scale[:, None] for w_q, scale in zip(weights_q8, scales_q8)]
        block_params = list(block_params)
        for l in range(len(k_caches)):
            for m, i in enumerate(Q8_PARAMS):
                block_params[12 * l + i] = dequantized[4 * l + m]
        head = dequantized[-1]
    x = wte[tokens.reshape(B)] + wpe[pos]  # (B, C)
    for l, (k_cache, v_cache) in enumerate(zip(k_caches, v_caches)):  # every block
        decode_block_reference(x, block_params[12 * l:12 * l + 12], k_cache, v_cache, pos,
                               n_head, eps, linear)
    h = F.layer_norm(x, (C,), ln_f_w, ln_f_b, eps)
    logits.view(B, -1).copy_(linear(h, head))
    next_tokens.view(B).copy_(logits.view(B, -1).argmax(dim=-1))
    return logits, next_tokens


class StepArgs:
    """What the op needs of a model besides the token: gathered once per set of caches
    (`model.decode_args`, dropped with the caches by setup_caches and reset_caches), so a step
    only looks up its two workspace buffers."""

    __slots__ = ("wte", "wpe", "flat", "ln_f_w", "ln_f_b", "k_caches", "v_caches", "n_head",
                 "eps", "vocab", "q8_sources", "q8_versions", "weights_q8", "scales_q8")

    def __init__(self, model, q8: bool = False):
        tr, c = model.transformer, model.config
        if model.lm_head.weight is not tr.wte.weight:
            raise ValueError("fused decode needs the lm head tied to the token embedding "
                             "(model.lm_head.weight is model.transformer.wte.weight)")
        self.wte, self.wpe = tr.wte.weight, tr.wpe.weight
        self.flat = [p for params in model.block_params for p in params]
        self.ln_f_w, self.ln_f_b = tr.ln_f.weight, tr.ln_f.bias
        self.k_caches = [cache.k_cache for cache in model.kv_caches]
        self.v_caches = [cache.v_cache for cache in model.kv_caches]
        self.n_head, self.eps, self.vocab = c.n_head, c.layer_norm_epsilon, c.vocab_size
        self.q8_sources = q8_weights(model) if q8 else None  # the float weights, like `flat`
        self.q8_versions = None

    def refresh_q8(self):
        """The int8 weights, quantized again where a weight changed since (its version)."""
        versions = [w._version for w in self.q8_sources]
        if versions != self.q8_versions:
            pairs = [quantized_weight(w) for w in self.q8_sources]
            self.weights_q8, self.scales_q8 = [w for w, _ in pairs], [s for _, s in pairs]
            self.q8_versions = versions


def _fused_step(model, token, start: int, weights: str = "fp32"):
    q8 = weights != "fp32"  # int8 or w8a8: the same int8 weights
    a = model.decode_args
    if a is None:
        a = model.decode_args = StepArgs(model, q8)
    ws, B = model.workspace, token.shape[0]
    logits = ws.take("logits", B, 1, a.vocab)
    next_tokens = ws.take("next_token", B, 1, dtype=torch.int64)
    with region("decode_step"):
        if q8:
            a.refresh_q8()
            ops.decode_step_q8_(token, start, a.wte, a.wpe, a.flat, a.ln_f_w, a.ln_f_b,
                                a.k_caches, a.v_caches, a.n_head, a.eps, logits, next_tokens,
                                a.weights_q8, a.scales_q8, weights == "w8a8")
        else:
            ops.decode_step_(token, start, a.wte, a.wpe, a.flat, a.ln_f_w, a.ln_f_b,
                             a.k_caches, a.v_caches, a.n_head, a.eps, logits, next_tokens)
    return logits, next_tokens


def decode_step(model, token, start: int):
    """One token per sequence, token (B, 1) at position `start`, through the KV cache: the
    whole model in one `decode_step_` call. Logits (B, 1, V), a view of the model's workspace
    (valid until the next call on the model)."""
    return _fused_step(model, token, start)[0]


def decode_greedy(model, token, start: int):
    """`decode_step` for greedy generation: the argmax of the logits, computed in the same
    call. Next token ids (B, 1) int64, a view of the model's workspace (valid until the next
    call on the model); the logits are in the workspace too."""
    return _fused_step(model, token, start)[1]


def decode_step_q8(model, token, start: int, weights: str = "int8"):
    """`decode_step` on the int8 weights of the `weights` switch (decode_step_q8_); weights
    "w8a8": with int8 activations too."""
    return _fused_step(model, token, start, weights)[0]


def decode_greedy_q8(model, token, start: int, weights: str = "int8"):
    """`decode_greedy` on the int8 weights of the `weights` switch (decode_step_q8_)."""
    return _fused_step(model, token, start, weights)[1]
