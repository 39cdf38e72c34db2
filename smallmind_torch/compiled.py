"""torch.compile as a form (beyond the seed): what a user would compile instead of writing ops.

The `compile` switch compiles, gpt-fast style:
- the forward (prefill, or a no-cache step's full forward) through the reference modules, with
  dynamic shapes, since the prompt length varies;
- the decode step over the static KV cache, written with static shapes (`static_decode`): the
  new token's k and v go to their position by index (`index_copy_` with a position tensor)
  rather than by slicing with a Python int, and attention reads the whole cache under a mask
  of the positions filled so far. One graph then serves every position: no recompilation per
  token (the study counts compiled graphs before and after its timed runs).
The forms inside are the phase's own (the `compiled` preset uses the reference forms).
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F

MODES = {"inductor": "default", "max-autotune": "max-autotune"}


def compiled_graphs() -> int:
    """How many graphs torch.compile has produced in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def static_decode(model, token, input_pos):
    """One token per sequence, token (B, 1) at the position held in input_pos (1,), through
    the KV cache; logits (B, 1, V). The same steps as GPT.allocating_forward for one token."""
    forms, c = model.phase.forms, model.config
    B, nh, hs = token.size(0), c.n_head, c.head_dim
    x = forms.embedding(token, model.transformer.wte.weight) + model.transformer.wpe(input_pos)
    filled = (model.positions <= input_pos).view(1, -1)  # (1, S): the keys this token attends
    for block, cache in zip(model.transformer.h, model.phase.kv_caches):
        q, k, v = forms.linear(forms.layer_norm(x, block.ln_1), block.attn.c_attn).split(c.n_embd, dim=2)
        q = q.view(B, 1, nh, hs).transpose(1, 2)  # (B, nh, 1, hs)
        keys = cache.k_cache[:B].index_copy_(2, input_pos, k.view(B, 1, nh, hs).transpose(1, 2))
        values = cache.v_cache[:B].index_copy_(2, input_pos, v.view(B, 1, nh, hs).transpose(1, 2))
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=filled)  # (B, nh, 1, hs)
        x = x + forms.linear(y.transpose(1, 2).reshape(B, 1, c.n_embd), block.attn.c_proj)
        x = x + block.mlp(forms.layer_norm(x, block.ln_2), forms)
    return forms.linear(forms.layer_norm(x, model.transformer.ln_f), model.lm_head)


def _compile(fn, mode: str, **kwargs):
    # SMALLMIND_COMPILE_BACKEND=aot_eager captures and checks the graphs without Inductor's
    # code generation (seconds instead of a minute); the tests use it.
    backend = os.environ.get("SMALLMIND_COMPILE_BACKEND", "inductor")
    if backend == "inductor":
        return torch.compile(fn, mode=MODES[mode], **kwargs)
    return torch.compile(fn, backend=backend, **kwargs)


def compile_forward(forward, mode: str):
    """`forward(model, idx, start, last_only, use_cache)` compiled with dynamic shapes."""
    return _compile(forward, mode, dynamic=True)


def compile_decode(mode: str):
    """The Forms.decode of a compiled phase: static_decode, one graph for every position (and
    models of one shape share it; a new batch size makes the batch dimension dynamic)."""
    step = _compile(static_decode, mode, fullgraph=True)

    def decode(model, token, start):
        model.input_pos.fill_(start)  # a tensor, so the position is data, not a new graph
        # a fresh (B, 1) tensor: a column of generate's token buffer has that buffer's row
        # stride (even at B = 1), which would make each generation length a new graph
        token = token.clone(memory_format=torch.contiguous_format)
        try:
            return step(model, token, model.input_pos)
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            # Dynamo compiles a function at most `recompile_limit` times per process (models
            # of many shapes in one session): go on uncompiled, correct, and say so once.
            warnings.warn("torch.compile's recompile limit for the decode step is reached in "
                          "this process (models of many shapes); running it uncompiled "
                          "(torch._dynamo.reset() clears the cache)", stacklevel=3)
            return static_decode(model, token, model.input_pos)
    return decode

