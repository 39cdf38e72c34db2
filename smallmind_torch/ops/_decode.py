"""Fused decode step of one transformer block: `torch.ops.smallmind.decode_block_`.

Kernel in `ops/decode.cpp`. One C++ call runs a whole pre-LN GPT-2 block for one new token
per sequence (LN1, qkv, KV-cache write, attention over positions 0..pos, projection,
residual, LN2, MLP with tanh GELU, residual), instead of ~35 small op calls whose dispatch
overhead dominates a decode step. Inference only (no autograd formula).

    decode_block_(x, block, k_cache, v_cache, pos, n_head)       x (B, C) updated in place
    decode_block_tensors_(x, ln1_w, ln1_b, attn_w, attn_b, attn_proj_w, attn_proj_b,
                          ln2_w, ln2_b, fc_w, fc_b, mlp_proj_w, mlp_proj_b,
                          k_cache, v_cache, pos, n_head, eps)
    decode_block_reference(...same arguments as decode_block_tensors_...)   plain PyTorch

k_cache / v_cache: (maxB, n_head, S, head_dim), B <= maxB, 0 <= pos < S; row `pos` of
sequences 0..B-1 is written. All tensors float32, CPU, contiguous.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._build import load

load()  # build / load the C++ extension (cached); raises CustomOpsUnavailable

_op = torch.ops.smallmind.decode_block_.default

__all__ = ["decode_block_", "decode_block_tensors_", "decode_block_reference", "block_tensors"]


def block_tensors(block) -> tuple:
    """The 12 parameter tensors of a smallmind_torch.model.Block, in the op's order."""
    attn, mlp = block.attn, block.mlp
    return (block.ln_1.weight, block.ln_1.bias, attn.c_attn.weight, attn.c_attn.bias,
            attn.c_proj.weight, attn.c_proj.bias, block.ln_2.weight, block.ln_2.bias,
            mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias)


def _check_no_grad(tensors):
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise RuntimeError("decode_block_ is inference only (no autograd); call it under "
                           "torch.no_grad() or torch.inference_mode()")


def decode_block_tensors_(x, ln1_w, ln1_b, attn_w, attn_b, attn_proj_w, attn_proj_b,
                          ln2_w, ln2_b, fc_w, fc_b, mlp_proj_w, mlp_proj_b,
                          k_cache, v_cache, pos: int, n_head: int, eps: float = 1e-5):
    """The op with explicit tensors; updates x, k_cache, v_cache in place and returns x."""
    params = (ln1_w, ln1_b, attn_w, attn_b, attn_proj_w, attn_proj_b,
              ln2_w, ln2_b, fc_w, fc_b, mlp_proj_w, mlp_proj_b)
    _check_no_grad((x, *params))
    _op(x, *params, k_cache, v_cache, int(pos), int(n_head), float(eps))
    return x


def decode_block_(x, block, k_cache, v_cache, pos: int, n_head: int):
    """Run `block` (a model.Block) for one token per sequence at position `pos`, in place."""
    params = block_tensors(block)
    _check_no_grad((x, *params))
    _op(x, *params, k_cache, v_cache, int(pos), int(n_head), float(block.ln_1.eps))
    return x


def decode_block_reference(x, ln1_w, ln1_b, attn_w, attn_b, attn_proj_w, attn_proj_b,
                           ln2_w, ln2_b, fc_w, fc_b, mlp_proj_w, mlp_proj_b,
                           k_cache, v_cache, pos: int, n_head: int, eps: float = 1e-5):
    """Plain PyTorch, same in-place contract as decode_block_tensors_."""
    B, C = x.shape
    hs = C // n_head
    h = F.layer_norm(x, (C,), ln1_w, ln1_b, eps)
    q, k, v = F.linear(h, attn_w, attn_b).split(C, dim=1)
    k_cache[:B, :, pos] = k.view(B, n_head, hs)
    v_cache[:B, :, pos] = v.view(B, n_head, hs)
    keys, values = k_cache[:B, :, :pos + 1], v_cache[:B, :, :pos + 1]  # (B, nh, L, hs)
    att = (q.view(B, n_head, 1, hs) @ keys.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
    y = (torch.softmax(att, dim=-1) @ values).view(B, C)
    x.add_(F.linear(y, attn_proj_w, attn_proj_b))
    h = F.layer_norm(x, (C,), ln2_w, ln2_b, eps)
    f = F.gelu(F.linear(h, fc_w, fc_b), approximate="tanh")
    x.add_(F.linear(f, mlp_proj_w, mlp_proj_b))
    return x


@torch.library.register_fake("smallmind::decode_block_")
def _decode_block_fake(x, ln1_w, ln1_b, attn_w, attn_b, attn_proj_w, attn_proj_b, ln2_w, ln2_b,
                       fc_w, fc_b, mlp_proj_w, mlp_proj_b, k_cache, v_cache, pos, n_head, eps):
    return None
