"""Static KV cache (bottleneck 3b), gpt-fast style: buffers allocated once per layer."""
from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """K and V of one layer for up to `max_batch` sequences of up to `max_seq_len` tokens."""

    def __init__(self, max_batch, n_head, max_seq_len, head_dim, *, dtype, device):
        super().__init__()
        shape = (max_batch, n_head, max_seq_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def max_batch(self) -> int:
        return self.k_cache.size(0)

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, nh, T, hs) at positions start..start+T-1; return the keys and values
        of positions 0..start+T-1 as views of the cache, (B, nh, start+T, hs)."""
        B, _, T, _ = k.shape
        end = start + T
        self.k_cache[:B, :, start:end].copy_(k)
        self.v_cache[:B, :, start:end].copy_(v)
        return self.k_cache[:B, :, :end], self.v_cache[:B, :, :end]
