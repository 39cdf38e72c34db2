"""Preallocated buffers (bottleneck 3a).

A `Workspace` hands out named buffers. A name's buffer is allocated the first time it is
asked for and reused afterwards as a view of the right shape; it only grows if a larger
shape is asked for. A phase's runtime holds its workspace (runtime.PhaseRuntime.workspace);
`GPT.setup_workspace(max_batch)` runs one forward at
(max_batch, block_size) so that every buffer has its final size; from then on an inference
forward allocates nothing for its intermediates. `allocations` counts the buffers made, so
tests can check that it stays put.
"""
from __future__ import annotations

import math
import warnings

import torch

from .labels import region


class Workspace:
    def __init__(self, *, dtype: torch.dtype, device: torch.device):
        self.dtype = dtype
        self.device = device
        self.buffers: dict[str, torch.Tensor] = {}
        self.allocations = 0
        # (name, shape) -> the view handed out last time: a decode step asks for the same
        # shapes every time, and making a view costs more than a dict lookup
        self._views: dict[tuple, torch.Tensor] = {}

    def take(self, name: str, *shape: int, dtype: "torch.dtype | None" = None) -> torch.Tensor:
        """A view of shape `shape` of the buffer `name` (of the workspace's dtype, or `dtype`)."""
        view = self._views.get((name, shape))
        if view is not None:
            return view
        numel = math.prod(shape)
        buffer = self.buffers.get(name)
        dtype = dtype or self.dtype
        # Buffers and views made outside inference mode even inside it: made in it, they could
        # not be written by the next call outside it (torch.no_grad), which is how generate runs.
        with torch.inference_mode(False):
            if buffer is None or buffer.numel() < numel or buffer.dtype != dtype:
                buffer = torch.empty(numel, dtype=dtype, device=self.device)
                self.buffers[name] = buffer
                self.allocations += 1
                self._views = {key: v for key, v in self._views.items() if key[0] != name}
            view = self._views[(name, shape)] = buffer[:numel].view(shape)
        return view

    def scalar(self, value: float) -> torch.Tensor:
        """A 0-dim tensor holding `value`: in-place ops with a Python number wrap it in a
        fresh tensor on every call, with a tensor they allocate nothing."""
        name = f"scalar.{value!r}"
        if name not in self.buffers:
            with torch.inference_mode(False):  # as in take
                self.buffers[name] = torch.full((), value, dtype=self.dtype, device=self.device)
            self.allocations += 1
        return self.buffers[name]


def workspace_forward(model, idx, start: int, last_only: bool, use_cache: bool):
    """GPT.allocating_forward, written into the model's workspace: same steps, same forms, no new
    tensors. Logits (B, T or 1, V), a view of the workspace, valid until the next call.

    Buffers are shared across layers (layers run one after another), so the whole forward
    needs one residual stream, one LayerNorm output, one qkv, ... whatever n_layer is.
    """
    rt, c = model.phase, model.config
    forms, ws, kv_caches = rt.forms, rt.workspace, rt.kv_caches
    B, T = idx.shape
    C, nh, hs = c.n_embd, c.n_head, c.head_dim
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    x = ws.take("residual", B, T, C)
    with region("embedding"):
        for b in range(B):  # row by row: a window of a (B, L) token buffer is not contiguous
            torch.index_select(wte, 0, idx[b], out=x[b])
        x.add_(wpe[start:start + T])
    h = ws.take("layernorm.out", B, T, C)
    for i, block in enumerate(model.transformer.h):
        forms.layer_norm(x, block.ln_1, out=h, ws=ws)
        qkv = forms.linear(h, block.attn.c_attn, out=ws.take("qkv", B, T, 3 * C))
        q, k, v = qkv.split(C, dim=2)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        if use_cache:
            with region("kv_cache"):
                k, v = kv_caches[i].update(start, k, v)  # (B, nh, start + T, hs)
        else:  # head-major copies, so that batched matmuls can view them as (B * nh, T, hs)
            with region("other"):
                k = ws.take("attention.k", B, nh, T, hs).copy_(k)
                v = ws.take("attention.v", B, nh, T, hs).copy_(v)
        y = ws.take("attention.out", B, T, C)
        forms.attention_into(q, k, v, start, model.future_mask,
                             out=y.view(B, T, nh, hs).transpose(1, 2), ws=ws)  # (B, nh, T, hs) view
        proj = forms.linear(y, block.attn.c_proj, out=ws.take("proj", B, T, C))
        with region("other"):
            x.add_(proj)
        forms.layer_norm(x, block.ln_2, out=h, ws=ws)
        fc = forms.linear(h, block.mlp.c_fc, out=ws.take("mlp.fc", B, T, 4 * C))
        with region("other"):
            torch.ops.aten.gelu_(fc, approximate="tanh")
        forms.linear(fc, block.mlp.c_proj, out=proj)
        with region("other"):
            x.add_(proj)
    forms.layer_norm(x, model.transformer.ln_f, out=h, ws=ws)
    if last_only:
        h, T = h[:, -1:, :], 1  # (B, 1, C)
    return forms.linear(h, model.lm_head, out=ws.take("logits", B, T, c.vocab_size))


def inference_forward(model, idx, start: int, last_only: bool, use_cache: bool):
    """The workspace phases' forward: workspace_forward for inference; the allocating forward
    (with a warning, shown once per call site) while autograd records, since buffers reused across calls
    cannot hold what a backward needs."""
    if torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters()):
        warnings.warn("workspace=True applies to inference only (torch.no_grad / "
                      "inference_mode); this forward records autograd, so it uses the "
                      "allocating path", stacklevel=5)
        return model.allocating_forward(idx, start, last_only, use_cache)
    return workspace_forward(model, idx, start, last_only, use_cache)
