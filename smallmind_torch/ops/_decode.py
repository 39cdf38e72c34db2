"""Bindings of csrc/decode.cpp: the whole model's decode step (`decode_step_`: embeddings, every
block, ln_f, the tied lm head and the argmax, for one new token per sequence) and one GPT-2
block (`decode_block_`), each in one C++ call.

The parameter order (`BLOCK_PARAMS`), the mapping from a model Block, the plain-PyTorch
references and the model's decode step live with the model, in `smallmind_torch/fused_decode.py`.
"""
from __future__ import annotations

import torch

from ..decode_layout import BLOCK_PARAMS, Q8_PARAMS, param_shape
from ._build import load
from ._common import CALL_ERRORS, I8, I64, check_contiguous, check_dim, check_eps, check_shape, \
    check_tensor, diagnose, tensor_problem

load()  # build / load the C++ extension (cached); raises CustomOpsUnavailable

_decode_block_ = torch.ops.smallmind.decode_block_.default
_decode_step_ = torch.ops.smallmind.decode_step_.default
_decode_step_q8_ = torch.ops.smallmind.decode_step_q8_.default

__all__ = ["decode_block_", "decode_step_", "decode_step_q8_"]


def decode_step_(tokens, pos: int, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches, v_caches,
                 n_head: int, eps: float, logits, next_tokens):
    """One decode step of the whole model for tokens (B,) or (B, 1) at position `pos`: writes
    row `pos` of every cache, the logits (B, V) or (B, 1, V) and their argmax next_tokens (B,)
    or (B, 1) in place; returns (logits, next_tokens). block_params: the blocks' tensors, 12 per
    block in BLOCK_PARAMS order, block after block; the lm head is wte (tied)."""
    try:
        if torch.is_grad_enabled() and (wte.requires_grad or any(p.requires_grad
                                                                 for p in block_params)):
            raise RuntimeError("smallmind::decode_step_ is inference only (no autograd); call "
                               "it under torch.no_grad() or torch.inference_mode()")
        _decode_step_(tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches, v_caches,
                      n_head, eps, logits, next_tokens)
        return logits, next_tokens
    except CALL_ERRORS as exc:
        _diagnose_step("decode_step_", exc, tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b,
                       k_caches, v_caches, n_head, logits, next_tokens)
        raise


def _diagnose_step(op, exc, tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches,
                   v_caches, n_head, logits, next_tokens):
    tensors = [("wte", wte), ("wpe", wpe), ("ln_f_w", ln_f_w), ("ln_f_b", ln_f_b),
               ("logits", logits)]
    for name, seq in (("block_params", block_params), ("k_caches", k_caches),
                      ("v_caches", v_caches)):
        if isinstance(seq, (list, tuple)):
            tensors += [(f"{name}[{i}]", t) for i, t in enumerate(seq)]
    diagnose(op, exc, tensors=tensors, longs=(("tokens", tokens), ("next_tokens", next_tokens)),
             ints=(("pos", pos), ("n_head", n_head)))


def decode_step_q8_(tokens, pos: int, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches,
                    v_caches, n_head: int, eps: float, logits, next_tokens, weights_q8, scales_q8,
                    int8_activations: bool = False):
    """`decode_step_` with int8 weights (the `weights` switch): weights_q8 / scales_q8 hold, per
    block, c_attn, attn.c_proj, c_fc and mlp.c_proj as int8 (N, K) with float32 scales (N,)
    (ops.quantize_per_channel), then the lm head's; the float32 weights in block_params are
    not read. With int8_activations (w8a8) each matrix's input rows are quantized to int8 as
    linear_w8a8 does. Returns (logits, next_tokens)."""
    try:
        if torch.is_grad_enabled() and (wte.requires_grad or any(p.requires_grad
                                                                 for p in block_params)):
            raise RuntimeError("smallmind::decode_step_q8_ is inference only (no autograd); call "
                               "it under torch.no_grad() or torch.inference_mode()")
        _decode_step_q8_(tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches,
                         v_caches, n_head, eps, logits, next_tokens, weights_q8, scales_q8,
                         bool(int8_activations))
        return logits, next_tokens
    except CALL_ERRORS as exc:
        for name, seq, dtype in (("weights_q8", weights_q8, I8),
                                 ("scales_q8", scales_q8, torch.float32)):
            for i, t in enumerate(seq if isinstance(seq, (list, tuple)) else ()):
                problem = tensor_problem("decode_step_q8_", f"{name}[{i}]", t, dtype)
                if problem is not None:
                    raise problem from exc
        _diagnose_step("decode_step_q8_", exc, tokens, pos, wte, wpe, block_params, ln_f_w,
                       ln_f_b, k_caches, v_caches, n_head, logits, next_tokens)
        raise


def decode_block_(x, params, k_cache, v_cache, pos: int, n_head: int, eps: float):
    """Run one block (params in BLOCK_PARAMS order) for x (B, C) at `pos`, in place; returns x."""
    try:
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
            raise RuntimeError("smallmind::decode_block_ is inference only (no autograd); call "
                               "it under torch.no_grad() or torch.inference_mode()")
        _decode_block_(x, params, k_cache, v_cache, pos, n_head, eps)
        return x
    except CALL_ERRORS as exc:
        tensors = [("x", x), ("k_cache", k_cache), ("v_cache", v_cache)]
        if isinstance(params, (list, tuple)):
            tensors += [(f"params[{i}]", p) for i, p in enumerate(params)]
        diagnose("decode_block_", exc, tensors=tensors,
                 ints=(("pos", pos), ("n_head", n_head)))
        raise


# ---- fake: check_decode_args of decode.cpp, in Python ----

def _check_decode_args(x, params, k_cache, v_cache, pos, n_head, eps):
    op = "decode_block_"
    for name, t in (("x", x), ("k_cache", k_cache), ("v_cache", v_cache)):
        check_tensor(op, name, t)
        check_contiguous(op, name, t)
    check_dim(op, "x", x, 2)
    b, c = x.shape
    torch._check(b >= 1 and c >= 1,
                 lambda: f"smallmind::{op}: 'x' must be (B, C) with B, C >= 1, got {list(x.shape)}")
    torch._check_value(n_head >= 1 and c % n_head == 0,
                       lambda: f"smallmind::{op}: n_head ({n_head}) must be positive and "
                               f"divide C = x.size(1) = {c}")
    check_eps(op, eps)
    if len(params) != len(BLOCK_PARAMS):
        raise RuntimeError(f"smallmind::{op}: 'params' must hold the block's {len(BLOCK_PARAMS)} "
                           f"tensors in fused_decode.BLOCK_PARAMS order (ln_1.weight, ln_1.bias, "
                           f"attn.c_attn.weight, ...), got {len(params)}")
    for i, (p, name, shape) in enumerate(zip(params, BLOCK_PARAMS, (param_shape(i, c) for i in range(len(BLOCK_PARAMS))))):
        label = f"params[{i}] ({name})"
        check_tensor(op, label, p)
        check_contiguous(op, label, p)
        check_shape(op, label, p, shape)
    hs = c // n_head
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        check_dim(op, name, t, 4)
        torch._check(t.shape[1] == n_head and t.shape[3] == hs,
                     lambda: f"smallmind::{op}: '{name}' must be (maxB, n_head, S, head_dim) = "
                             f"(maxB, {n_head}, S, {hs}), got {list(t.shape)}")
    torch._check(k_cache.shape == v_cache.shape,
                 lambda: f"smallmind::{op}: k_cache and v_cache must have the same shape, got "
                         f"{list(k_cache.shape)} and {list(v_cache.shape)}")
    max_b, s = k_cache.shape[0], k_cache.shape[2]
    torch._check(b <= max_b,
                 lambda: f"smallmind::{op}: batch B = {b} exceeds the KV cache's max batch {max_b}")
    torch._check_value(0 <= pos < s,
                       lambda: f"smallmind::{op}: pos must lie in [0, {s - 1}] (the cache holds "
                               f"S = {s} positions), got {pos}")


@torch.library.register_fake("smallmind::decode_block_")
def _decode_block_fake(x, params, k_cache, v_cache, pos, n_head, eps):
    _check_decode_args(x, params, k_cache, v_cache, pos, n_head, eps)


# ---- fake of decode_step_: decode_step_cpu's checks, in Python (token ids are data: C++ only) ----

def _check_matrix(op, name, t):
    check_tensor(op, name, t)
    check_contiguous(op, name, t)


def _check_step_args(tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches, v_caches,
                     n_head, eps, logits, next_tokens, op="decode_step_"):
    _check_matrix(op, "wte", wte)
    check_dim(op, "wte", wte, 2)
    v, c = wte.shape
    torch._check(v >= 1 and c >= 1, lambda: f"smallmind::{op}: 'wte' must be (vocab, C) with "
                                            f"vocab, C >= 1, got {list(wte.shape)}")
    _check_matrix(op, "wpe", wpe)
    check_dim(op, "wpe", wpe, 2)
    torch._check(wpe.shape[1] == c, lambda: f"smallmind::{op}: size mismatch, wpe.size(1) = "
                                            f"{wpe.shape[1]} but wte.size(1) (C) = {c} (they "
                                            f"must be equal)")
    torch._check_value(n_head >= 1 and c % n_head == 0,
                       lambda: f"smallmind::{op}: n_head ({n_head}) must be positive and "
                               f"divide C = wte.size(1) = {c}")
    check_eps(op, eps)
    n = len(block_params)
    if n < len(BLOCK_PARAMS) or n % len(BLOCK_PARAMS):
        raise RuntimeError(f"smallmind::{op}: 'block_params' must hold 12 tensors per block "
                           f"(BLOCK_PARAMS order, block after block) for at least one block, "
                           f"got {n}")
    n_layer = n // len(BLOCK_PARAMS)
    if len(k_caches) != n_layer or len(v_caches) != n_layer:
        raise RuntimeError(f"smallmind::{op}: 'k_caches' and 'v_caches' must hold one cache per "
                           f"block ({n_layer}), got {len(k_caches)} and {len(v_caches)}")
    for i, p in enumerate(block_params):
        label = f"block_params[{i}] (block {i // 12} {BLOCK_PARAMS[i % 12]})"
        _check_matrix(op, label, p)
        check_shape(op, label, p, param_shape(i % 12, c))
    for name, t in (("ln_f_w", ln_f_w), ("ln_f_b", ln_f_b)):
        _check_matrix(op, name, t)
        check_shape(op, name, t, (c,))
    hs = c // n_head
    for l in range(n_layer):
        for name, t in ((f"k_caches[{l}]", k_caches[l]), (f"v_caches[{l}]", v_caches[l])):
            _check_matrix(op, name, t)
            check_dim(op, name, t, 4)
            torch._check(t.shape[1] == n_head and t.shape[3] == hs,
                         lambda: f"smallmind::{op}: '{name}' must be (maxB, n_head, S, head_dim) "
                                 f"= (maxB, {n_head}, S, {hs}), got {list(t.shape)}")
        torch._check(k_caches[l].shape == k_caches[0].shape
                     and v_caches[l].shape == k_caches[0].shape,
                     lambda: f"smallmind::{op}: every cache must have the shape of k_caches[0]")
    max_b, s = k_caches[0].shape[0], k_caches[0].shape[2]
    check_tensor(op, "tokens", tokens, I64)
    if not ((tokens.dim() == 1 or (tokens.dim() == 2 and tokens.shape[1] == 1))
            and tokens.shape[0] >= 1):
        raise RuntimeError(f"smallmind::{op}: 'tokens' must be (B,) or (B, 1) with B >= 1, got "
                           f"shape {list(tokens.shape)}")
    b = tokens.shape[0]
    torch._check(b <= max_b, lambda: f"smallmind::{op}: batch B = {b} exceeds the KV caches' "
                                     f"max batch {max_b}")
    torch._check_value(0 <= pos < s and pos < wpe.shape[0],
                       lambda: f"smallmind::{op}: pos must lie in [0, {min(s, wpe.shape[0]) - 1}] "
                               f"(the caches hold {s} positions, wpe {wpe.shape[0]}), got {pos}")
    _check_matrix(op, "logits", logits)
    torch._check(tuple(logits.shape) in ((b, v), (b, 1, v)),
                 lambda: f"smallmind::{op}: 'logits' must be (B, vocab) = ({b}, {v}) or (B, 1, "
                         f"vocab), got {list(logits.shape)}")
    check_tensor(op, "next_tokens", next_tokens, I64)
    check_contiguous(op, "next_tokens", next_tokens)
    torch._check(tuple(next_tokens.shape) in ((b,), (b, 1)),
                 lambda: f"smallmind::{op}: 'next_tokens' must be (B,) or (B, 1) with B = {b}, "
                         f"got {list(next_tokens.shape)}")


@torch.library.register_fake("smallmind::decode_step_")
def _decode_step_fake(tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches, v_caches,
                      n_head, eps, logits, next_tokens):
    _check_step_args(tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches, v_caches,
                     n_head, eps, logits, next_tokens)


@torch.library.register_fake("smallmind::decode_step_q8_")
def _decode_step_q8_fake(tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches, v_caches,
                         n_head, eps, logits, next_tokens, weights_q8, scales_q8,
                         int8_activations=False):
    op = "decode_step_q8_"
    _check_step_args(tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches, v_caches,
                     n_head, eps, logits, next_tokens, op)
    n_layer = len(block_params) // len(BLOCK_PARAMS)
    n = len(Q8_PARAMS) * n_layer + 1
    if len(weights_q8) != n or len(scales_q8) != n:
        raise RuntimeError(f"smallmind::{op}: 'weights_q8' and 'scales_q8' must each hold 4 "
                           f"tensors per block (c_attn, attn.c_proj, c_fc, mlp.c_proj) and the "
                           f"lm head, {n} for {n_layer} blocks; got {len(weights_q8)} and "
                           f"{len(scales_q8)}")
    for i, (w, scale) in enumerate(zip(weights_q8, scales_q8)):
        shape = tuple(wte.shape) if i == n - 1 else param_shape(Q8_PARAMS[i % 4], wte.shape[1])
        check_tensor(op, f"weights_q8[{i}]", w, I8)
        check_shape(op, f"weights_q8[{i}]", w, shape)
        check_contiguous(op, f"weights_q8[{i}]", w)
        _check_matrix(op, f"scales_q8[{i}]", scale)
        check_shape(op, f"scales_q8[{i}]", scale, shape[:1])
