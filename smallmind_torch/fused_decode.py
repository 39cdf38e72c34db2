"""Fused decode (beyond the seed): a KV-cache decode step that runs each block as one C++ op.

The unit in one file, read top to bottom:
- `BLOCK_PARAMS` / `block_params(block)`: the one place that maps a Block's modules to the
  op's parameter list (the op takes them as one `Tensor[]`);
- `decode_block_reference`: the op in plain PyTorch, in the same step order and with the same
  names as `csrc/decode.cpp`;
- `decode_step`: the model's decode step with the op (embeddings, one op per block, ln_f,
  lm_head), what the `fused_decode` switch selects for one new token per sequence.

Why: a decode step through the module path is ~35 small op calls per block, each paying the
dispatcher and Python; one C++ call per block pays it once.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import ops
from .labels import region

# The op's parameter order: nanoGPT names, weights in nn.Linear layout (out, in).
BLOCK_PARAMS = ("ln_1.weight", "ln_1.bias",
                "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
                "ln_2.weight", "ln_2.bias",
                "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")


def block_params(block) -> list:
    """The 12 parameters of a model.Block in BLOCK_PARAMS order."""
    return [block.get_parameter(name) for name in BLOCK_PARAMS]


def decode_block_reference(x, params, k_cache, v_cache, pos: int, n_head: int, eps: float):
    """Plain PyTorch of `decode_block_`: one new token per sequence, x (B, C) updated in place;
    row `pos` of k_cache / v_cache (maxB, nh, S, hs) written for sequences 0..B-1."""
    (ln_1_w, ln_1_b, c_attn_w, c_attn_b, attn_c_proj_w, attn_c_proj_b,
     ln_2_w, ln_2_b, c_fc_w, c_fc_b, mlp_c_proj_w, mlp_c_proj_b) = params
    B, C = x.shape
    hs = C // n_head
    # attention
    h = F.layer_norm(x, (C,), ln_1_w, ln_1_b, eps)
    q, k, v = F.linear(h, c_attn_w, c_attn_b).split(C, dim=1)
    k_cache[:B, :, pos] = k.view(B, n_head, hs)
    v_cache[:B, :, pos] = v.view(B, n_head, hs)
    keys, values = k_cache[:B, :, :pos + 1], v_cache[:B, :, :pos + 1]  # (B, nh, pos + 1, hs)
    att = (q.view(B, n_head, 1, hs) @ keys.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, 1, L)
    y = (torch.softmax(att, dim=-1) @ values).view(B, C)
    x.add_(F.linear(y, attn_c_proj_w, attn_c_proj_b))
    # MLP
    h = F.layer_norm(x, (C,), ln_2_w, ln_2_b, eps)
    fc = F.gelu(F.linear(h, c_fc_w, c_fc_b), approximate="tanh")
    x.add_(F.linear(fc, mlp_c_proj_w, mlp_c_proj_b))
    return x


def decode_step(model, token, start: int):
    """One token per sequence, token (B, 1) at position `start`, through the KV cache: the
    embeddings, one `decode_block_` per block, then ln_f and lm_head as in workspace_forward.
    Logits (B, 1, V), a view of the model's workspace."""
    c, forms, ws = model.config, model.forms, model.workspace
    B = token.size(0)
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    x = ws.take("residual", B, 1, c.n_embd)
    x2d = x.view(B, c.n_embd)
    with region("other"):
        torch.index_select(wte, 0, token.view(B), out=x2d)
        x2d.add_(wpe[start])
    for params, cache in zip(model.block_params, model.kv_caches):
        with region("decode_block"):
            ops.decode_block_(x2d, params, cache.k_cache, cache.v_cache, start, c.n_head,
                              c.layer_norm_epsilon)
    h = ws.take("layernorm.out", B, 1, c.n_embd)
    forms.layer_norm(x, model.transformer.ln_f, out=h, ws=ws)
    return forms.linear(h, model.lm_head, out=ws.take("logits", B, 1, c.vocab_size))
