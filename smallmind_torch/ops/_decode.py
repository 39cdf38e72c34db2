"""Bindings of csrc/decode.cpp: the whole model's decode step (`decode_step_`: embeddings, every
block, ln_f, the tied lm head and the argmax, for T new tokens per sequence: T = 1 a decode
step, T > 1 a prompt's prefill or a verify; `decode_step_q8_`
on int8 weights, `decode_step_q4_` on int4 ones) and one GPT-2 block (`decode_block_`), each in one C++ call.

A block's parameters go in as one list, in the order of `smallmind_torch/decode_layout.py`
(`BLOCK_PARAMS`, `Q8_PARAMS`, which csrc/decode_layout.h is rendered from). The mapping from a
model Block, the plain-PyTorch references and the model's decode step live with the model, in
`smallmind_torch/fused_decode.py`.
"""
from __future__ import annotations

import torch

from ..decode_layout import BLOCK_PARAMS, Q8_PARAMS, param_shape
from ._build import load
from ._common import CALL_ERRORS, I8, I64, U8, check_int, diagnose, fake_check, fake_eps, \
    fake_tensor, tensor_problem

load()  # build / load the C++ extension (cached); raises CustomOpsUnavailable

_decode_block_ = torch.ops.smallmind.decode_block_.default
_decode_step_ = torch.ops.smallmind.decode_step_.default
_decode_step_q8_ = torch.ops.smallmind.decode_step_q8_.default
_decode_step_q4_ = torch.ops.smallmind.decode_step_q4_.default

__all__ = ["decode_block_", "decode_step_", "decode_step_q4_", "decode_step_q8_"]



def _refuse_autograd(op: str, first, tensors) -> None:
    """The fused ops are inference only: refused while autograd would record them."""
    if torch.is_grad_enabled() and (first.requires_grad or any(p.requires_grad for p in tensors)):
        raise RuntimeError(f"smallmind::{op} is inference only (no autograd); call it under "
                           "torch.no_grad() or torch.inference_mode()")

def decode_step_(tokens, pos: int, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches, v_caches,
                 n_head: int, eps: float, logits, next_tokens):
    """One step of the whole model for tokens (B,) or (B, T) at positions pos .. pos + T - 1
    (T = 1: a decode step; T > 1: a prefill or a verify): writes those rows of every cache,
    the logits of every token (B, T, V) or of each sequence's last (B, 1, V) ((B, V) too for
    T = 1) and their argmax next_tokens, one per row of logits ((B, T), (B, 1), (B,)), in place;
    returns (logits, next_tokens). block_params: the blocks' tensors, 12 per block in
    BLOCK_PARAMS order, block after block; the lm head is wte (tied)."""
    try:
        _refuse_autograd("decode_step_", wte, block_params)
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
        _refuse_autograd("decode_step_q8_", wte, block_params)
        _decode_step_q8_(tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches,
                         v_caches, n_head, eps, logits, next_tokens, weights_q8, scales_q8,
                         bool(int8_activations))
        return logits, next_tokens
    except CALL_ERRORS as exc:
        _diagnose_lowp("decode_step_q8_", exc, (("weights_q8", weights_q8, I8),
                                                ("scales_q8", scales_q8, torch.float32)))
        _diagnose_step("decode_step_q8_", exc, tokens, pos, wte, wpe, block_params, ln_f_w,
                       ln_f_b, k_caches, v_caches, n_head, logits, next_tokens)
        raise


def decode_step_q4_(tokens, pos: int, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches,
                    v_caches, n_head: int, eps: float, logits, next_tokens, weights_q4, scales_q4,
                    group_size: int = 32):
    """`decode_step_` with int4 weights: weights_q4 / scales_q4 hold, per block, c_attn,
    attn.c_proj, c_fc and mlp.c_proj as weight_formats.quantize_int4 stores them (packed uint8
    (N, K / 2), float32 scales (N, K / group_size)), then the lm head's; each matrix's input rows
    are quantized to int8 as linear_q4 does. Returns (logits, next_tokens)."""
    try:
        _refuse_autograd("decode_step_q4_", wte, block_params)
        _decode_step_q4_(tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches,
                         v_caches, n_head, eps, logits, next_tokens, weights_q4, scales_q4,
                         group_size)
        return logits, next_tokens
    except CALL_ERRORS as exc:
        _diagnose_lowp("decode_step_q4_", exc, (("weights_q4", weights_q4, U8),
                                                ("scales_q4", scales_q4, torch.float32)))
        check_int("decode_step_q4_", "group_size", group_size)
        _diagnose_step("decode_step_q4_", exc, tokens, pos, wte, wpe, block_params, ln_f_w,
                       ln_f_b, k_caches, v_caches, n_head, logits, next_tokens)
        raise


def _diagnose_lowp(op, exc, lists):
    """The first bad tensor of the (name, list, dtype) weight lists, raised; else nothing."""
    for name, seq, dtype in lists:
        for i, t in enumerate(seq if isinstance(seq, (list, tuple)) else ()):
            problem = tensor_problem(op, f"{name}[{i}]", t, dtype)
            if problem is not None:
                raise problem from exc


def decode_block_(x, params, k_cache, v_cache, pos: int, n_head: int, eps: float):
    """Run one block (params in BLOCK_PARAMS order) for x (B, C) at `pos`, in place; returns x."""
    try:
        _refuse_autograd("decode_block_", x, params)
        _decode_block_(x, params, k_cache, v_cache, pos, n_head, eps)
        return x
    except CALL_ERRORS as exc:
        tensors = [("x", x), ("k_cache", k_cache), ("v_cache", v_cache)]
        if isinstance(params, (list, tuple)):
            tensors += [(f"params[{i}]", p) for i, p in enumerate(params)]
        diagnose("decode_block_", exc, tensors=tensors,
                 ints=(("pos", pos), ("n_head", n_head)))
        raise


# ---- fakes: nothing to compute (the ops write in place), refusing what check_block_args and
# decode_step_impl (decode.cpp) refuse, but for the token ids (data) and memory overlap ----

def _fake_param(op, name, t, i, c):
    """Parameter i (BLOCK_PARAMS order) of a block of width c."""
    fake_tensor(op, name, t, contiguous=True)
    fake_check(op, f"'{name}'", tuple(t.shape) == param_shape(i, c))


def _fake_caches(op, named_caches, n_head, hs):
    """KV caches (maxB, n_head, S, hs), all of the first one's shape."""
    first = named_caches[0][1]
    for name, t in named_caches:
        fake_tensor(op, name, t, dim=4, contiguous=True)
        fake_check(op, f"'{name}'", t.shape[1] == n_head and t.shape[3] == hs
                   and t.shape == first.shape)


def _fake_n_head_and_eps(op, n_head, c, eps):
    fake_check(op, "n_head", n_head >= 1 and c % n_head == 0, value=True)
    fake_eps(op, eps)


@torch.library.register_fake("smallmind::decode_block_")
def _decode_block_fake(x, params, k_cache, v_cache, pos, n_head, eps):
    op = "decode_block_"
    fake_tensor(op, "x", x, dim=2, contiguous=True)
    b, c = x.shape
    fake_check(op, "'x'", b >= 1 and c >= 1)
    _fake_n_head_and_eps(op, n_head, c, eps)
    fake_check(op, "'params'", len(params) == len(BLOCK_PARAMS))
    for i, p in enumerate(params):
        _fake_param(op, f"params[{i}]", p, i, c)
    _fake_caches(op, [("k_cache", k_cache), ("v_cache", v_cache)], n_head, c // n_head)
    fake_check(op, "batch", b <= k_cache.shape[0])
    fake_check(op, "pos", 0 <= pos < k_cache.shape[2], value=True)


def _fake_step(op, tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches, v_caches,
               n_head, eps, logits, next_tokens):
    fake_tensor(op, "wte", wte, dim=2, contiguous=True)
    v, c = wte.shape
    fake_check(op, "'wte'", v >= 1 and c >= 1)
    fake_tensor(op, "wpe", wpe, dim=2, contiguous=True)
    fake_check(op, "'wpe'", wpe.shape[1] == c)
    _fake_n_head_and_eps(op, n_head, c, eps)
    n = len(BLOCK_PARAMS)
    n_layer = len(block_params) // n
    fake_check(op, "'block_params'", n_layer >= 1 and len(block_params) % n == 0)
    fake_check(op, "'k_caches' and 'v_caches'", len(k_caches) == n_layer == len(v_caches))
    for i, p in enumerate(block_params):
        _fake_param(op, f"block_params[{i}]", p, i % n, c)
    for name, t in (("ln_f_w", ln_f_w), ("ln_f_b", ln_f_b)):
        fake_tensor(op, name, t, dim=1, contiguous=True)
        fake_check(op, f"'{name}'", t.shape[0] == c)
    _fake_caches(op, [(f"{name}[{l}]", t) for name, caches in (("k_caches", k_caches),
                                                               ("v_caches", v_caches))
                      for l, t in enumerate(caches)], n_head, c // n_head)
    fake_tensor(op, "tokens", tokens, I64)
    fake_check(op, "'tokens'", tokens.dim() in (1, 2) and tokens.shape[0] >= 1
               and (tokens.dim() == 1 or tokens.shape[1] >= 1))
    b, t = tokens.shape[0], (tokens.shape[1] if tokens.dim() == 2 else 1)
    fake_check(op, "batch", b <= k_caches[0].shape[0])
    fake_check(op, "pos", 0 <= pos and pos + t <= min(k_caches[0].shape[2], wpe.shape[0]),
               value=True)
    fake_tensor(op, "logits", logits, contiguous=True)
    shapes = [(b, t, v), (b, 1, v)] + ([(b, v)] if t == 1 else [])  # lists: SymInts hash not
    fake_check(op, "'logits'", tuple(logits.shape) in shapes)
    rows = t if logits.dim() == 3 and logits.shape[1] == t else 1
    fake_tensor(op, "next_tokens", next_tokens, I64, contiguous=True)
    fake_check(op, "'next_tokens'", tuple(next_tokens.shape) in
               [(b, rows)] + ([(b,)] if rows == 1 else []))
    return n_layer


@torch.library.register_fake("smallmind::decode_step_")
def _decode_step_fake(tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches, v_caches,
                      n_head, eps, logits, next_tokens):
    _fake_step("decode_step_", tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches,
               v_caches, n_head, eps, logits, next_tokens)


@torch.library.register_fake("smallmind::decode_step_q8_")
def _decode_step_q8_fake(tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches, v_caches,
                         n_head, eps, logits, next_tokens, weights_q8, scales_q8,
                         int8_activations=False):
    op = "decode_step_q8_"
    n_layer = _fake_step(op, tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches,
                         v_caches, n_head, eps, logits, next_tokens)
    n = len(Q8_PARAMS) * n_layer + 1  # then the lm head, shaped like wte
    fake_check(op, "'weights_q8' and 'scales_q8'", len(weights_q8) == n == len(scales_q8))
    for i, (w, scale) in enumerate(zip(weights_q8, scales_q8)):
        shape = tuple(wte.shape) if i == n - 1 else \
            param_shape(Q8_PARAMS[i % len(Q8_PARAMS)], wte.shape[1])
        fake_tensor(op, f"weights_q8[{i}]", w, I8, contiguous=True)
        fake_check(op, f"'weights_q8[{i}]'", tuple(w.shape) == shape)
        fake_tensor(op, f"scales_q8[{i}]", scale, contiguous=True)
        fake_check(op, f"'scales_q8[{i}]'", tuple(scale.shape) == shape[:1])


@torch.library.register_fake("smallmind::decode_step_q4_")
def _decode_step_q4_fake(tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches, v_caches,
                         n_head, eps, logits, next_tokens, weights_q4, scales_q4, group_size=32):
    op = "decode_step_q4_"
    n_layer = _fake_step(op, tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches,
                         v_caches, n_head, eps, logits, next_tokens)
    fake_check(op, "group_size", group_size >= 1 and group_size % 32 == 0, value=True)
    c = wte.shape[1]
    fake_check(op, "group_size", c % group_size == 0)
    n = len(Q8_PARAMS) * n_layer + 1  # then the lm head, shaped like wte
    fake_check(op, "'weights_q4' and 'scales_q4'", len(weights_q4) == n == len(scales_q4))
    for i, (w, scales) in enumerate(zip(weights_q4, scales_q4)):
        rows, cols = tuple(wte.shape) if i == n - 1 else param_shape(Q8_PARAMS[i % len(Q8_PARAMS)], c)
        fake_tensor(op, f"weights_q4[{i}]", w, U8, contiguous=True)
        fake_check(op, f"'weights_q4[{i}]'", tuple(w.shape) == (rows, cols // 2))
        fake_tensor(op, f"scales_q4[{i}]", scales, contiguous=True)
        fake_check(op, f"'scales_q4[{i}]'", tuple(scales.shape) == (rows, cols // group_size))
