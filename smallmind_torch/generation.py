"""Generation: greedy or sampled, with or without the static KV cache.

Without a cache every step is a full forward over the last block_size tokens (nanoGPT).
With it, the prompt is prefilled once and each step decodes one token; when the sequence
outgrows block_size, the positions of every kept token shift, so the cache is refilled
from the cropped window: exactly what the no-cache path computes.
"""
from __future__ import annotations

import torch


def sample(logits, temperature: float, top_k, generator):
    """Next token (B, 1) from logits (B, V): argmax if temperature == 0, else sampled."""
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth_best = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def _check_args(model, idx, max_new_tokens, temperature, top_k):
    model._check_idx(idx, max_len=None)  # longer prompts are cropped to the last block_size
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0.0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")


@torch.no_grad()
def generate_stream(model, idx, max_new_tokens, temperature=0.0, top_k=None, generator=None):
    _check_args(model, idx, max_new_tokens, temperature, top_k)
    if max_new_tokens == 0:
        return
    block_size = model.config.block_size
    B, T0 = idx.shape
    # All tokens of the run, written in place: no per-step concatenation.
    tokens = torch.empty(B, T0 + max_new_tokens, dtype=torch.long, device=idx.device)
    tokens[:, :T0] = idx
    use_cache = model.opt.kv_cache
    if use_cache:
        if model.kv_caches is None or model.kv_caches[0].max_batch < B:
            model.setup_caches(max_batch=B)
        logits = model.prefill(tokens[:, max(0, T0 - block_size):T0])
    else:
        logits = model._forward_any(tokens[:, max(0, T0 - block_size):T0], 0, True, False)[:, -1, :]
    for n in range(T0, T0 + max_new_tokens):
        tokens[:, n:n + 1] = sample(logits, float(temperature), top_k, generator)
        yield tokens[:, n:n + 1]
        if n + 1 == T0 + max_new_tokens:
            break
        window = tokens[:, max(0, n + 1 - block_size):n + 1]  # the last block_size tokens
        if use_cache and model.cache_lengths[0] < block_size:
            logits = model._decode_step(tokens[:, n:n + 1])
        elif use_cache:  # cache full: positions shift, refill it from the cropped window
            logits = model.prefill(window)
        else:
            logits = model._forward_any(window, 0, True, False)[:, -1, :]


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=0.0, top_k=None, generator=None):
    new = list(generate_stream(model, idx, max_new_tokens, temperature, top_k, generator))
    return torch.cat([idx] + new, dim=1)
