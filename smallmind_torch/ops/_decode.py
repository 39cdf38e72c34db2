"""Binding of csrc/decode.cpp: one whole GPT-2 block for one decode token, in one C++ call.

The parameter order (`BLOCK_PARAMS`), the mapping from a model Block and the plain-PyTorch
reference live with the model, in `smallmind_torch/fused_decode.py`.
"""
from __future__ import annotations

import torch

from ._build import load
from ._common import CALL_ERRORS, check_contiguous, check_dim, check_eps, check_shape, \
    check_tensor, diagnose

load()  # build / load the C++ extension (cached); raises CustomOpsUnavailable

_decode_block_ = torch.ops.smallmind.decode_block_.default

__all__ = ["decode_block_"]


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

def _param_shapes(c: int) -> list:
    """Expected shapes in BLOCK_PARAMS order (nn.Linear weights are (out, in))."""
    return [(c,), (c,), (3 * c, c), (3 * c,), (c, c), (c,),
            (c,), (c,), (4 * c, c), (4 * c,), (c, 4 * c), (c,)]


_PARAM_NAMES = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")


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
    if len(params) != len(_PARAM_NAMES):
        raise RuntimeError(f"smallmind::{op}: 'params' must hold the block's {len(_PARAM_NAMES)} "
                           f"tensors in fused_decode.BLOCK_PARAMS order (ln_1.weight, ln_1.bias, "
                           f"attn.c_attn.weight, ...), got {len(params)}")
    for i, (p, name, shape) in enumerate(zip(params, _PARAM_NAMES, _param_shapes(c))):
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
