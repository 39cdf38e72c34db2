"""Preallocated buffers (bottleneck 3a).

A `Workspace` hands out named buffers. A name's buffer is allocated the first time it is
asked for and reused afterwards as a view of the right shape; it only grows if a larger
shape is asked for. `GPT.setup_workspace(max_batch)` runs one forward at
(max_batch, block_size) so that every buffer has its final size; from then on an inference
forward allocates nothing for its intermediates. `allocations` counts the buffers made, so
tests can check that it stays put.
"""
from __future__ import annotations

import math

import torch

from .labels import region


class Workspace:
    def __init__(self, *, dtype: torch.dtype, device: torch.device):
        self.dtype = dtype
        self.device = device
        self.buffers: dict[str, torch.Tensor] = {}
        self.allocations = 0

    def take(self, name: str, *shape: int) -> torch.Tensor:
        numel = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < numel:
            buffer = torch.empty(numel, dtype=self.dtype, device=self.device)
            self.buffers[name] = buffer
            self.allocations += 1
        return buffer[:numel].view(shape)

    def scalar(self, value: float) -> torch.Tensor:
        """A 0-dim tensor holding `value`: in-place ops with a Python number wrap it in a
        fresh tensor on every call, with a tensor they allocate nothing."""
        name = f"scalar.{value!r}"
        if name not in self.buffers:
            self.buffers[name] = torch.full((), value, dtype=self.dtype, device=self.device)
            self.allocations += 1
        return self.buffers[name]


def workspace_forward(model, ws: Workspace, idx, start: int, last_only: bool, use_cache: bool):
    """GPT._forward, written into `ws`'s buffers: same steps, same forms, no new tensors.

    Buffers are shared across layers (layers run one after another), so the whole forward
    needs one residual stream, one LayerNorm output, one qkv, ... whatever n_layer is.
    """
    from .attention import attention_into
    from .forms import layer_norm, linear

    opt, c = model.opt, model.config
    B, T = idx.shape
    C, nh, hs = c.n_embd, c.n_head, c.head_dim
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    x = ws.take("residual", B, T, C)
    with region("other"):
        for b in range(B):  # row by row: a window of a (B, L) token buffer is not contiguous
            torch.index_select(wte, 0, idx[b], out=x[b])
        x.add_(wpe[start:start + T])
    h = ws.take("layernorm.out", B, T, C)
    for i, block in enumerate(model.transformer.h):
        layer_norm(opt, x, block.ln_1, out=h, ws=ws)
        qkv = linear(opt, h, block.attn.c_attn, out=ws.take("qkv", B, T, 3 * C))
        q, k, v = qkv.split(C, dim=2)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        if use_cache:
            with region("kv_cache"):
                k, v = model.kv_caches[i].update(start, k, v)  # (B, nh, start + T, hs)
        else:  # head-major copies, so that batched matmuls can view them as (B * nh, T, hs)
            with region("other"):
                k = ws.take("attention.k", B, nh, T, hs).copy_(k)
                v = ws.take("attention.v", B, nh, T, hs).copy_(v)
        y = ws.take("attention.out", B, T, C)
        attention_into(opt, q, k, v, start, model.future_mask,
                       out=y.view(B, T, nh, hs).transpose(1, 2), ws=ws)  # (B, nh, T, hs) view
        proj = linear(opt, y, block.attn.c_proj, out=ws.take("proj", B, T, C))
        with region("other"):
            x.add_(proj)
        layer_norm(opt, x, block.ln_2, out=h, ws=ws)
        fc = linear(opt, h, block.mlp.c_fc, out=ws.take("mlp.fc", B, T, 4 * C))
        with region("other"):
            torch.ops.aten.gelu_(fc, approximate="tanh")
        linear(opt, fc, block.mlp.c_proj, out=proj)
        with region("other"):
            x.add_(proj)
    layer_norm(opt, x, model.transformer.ln_f, out=h, ws=ws)
    if last_only:
        h, T = h[:, -1:, :], 1  # (B, 1, C)
    return linear(opt, h, model.lm_head, out=ws.take("logits", B, T, c.vocab_size))


def fused_decode_forward(model, ws: Workspace, idx, start: int):
    """A KV-cache decode step (one token per sequence, idx (B, 1) at position `start`) with
    each block as one C++ op (`ops.decode_block_`, the fused_decode switch); embeddings,
    ln_f and lm_head as in workspace_forward. Logits (B, 1, V), a view of the workspace."""
    from . import ops
    from .forms import layer_norm, linear

    opt, c = model.opt, model.config
    B = idx.size(0)
    C = c.n_embd
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    x = ws.take("residual", B, 1, C)
    x2d = x.view(B, C)
    with region("other"):
        torch.index_select(wte, 0, idx.view(B), out=x2d)
        x2d.add_(wpe[start])
    op = torch.ops.smallmind.decode_block_.default
    n_head = c.n_head
    for block, cache in zip(model.transformer.h, model.kv_caches):
        with region("decode_block"):
            op(x2d, *ops.block_tensors(block), cache.k_cache, cache.v_cache, start, n_head,
               block.ln_1.eps)
    h = ws.take("layernorm.out", B, 1, C)
    layer_norm(opt, x, model.transformer.ln_f, out=h, ws=ws)
    return linear(opt, h, model.lm_head, out=ws.take("logits", B, 1, c.vocab_size))
