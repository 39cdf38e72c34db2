"""Generation: greedy or sampled, with or without the static KV cache.

Without a cache every step is a full forward over the last block_size tokens (nanoGPT).
With it, the prompt is prefilled once and each step decodes one token; when the sequence
outgrows block_size, the positions of every kept token shift, so the cache is refilled
from the cropped window: exactly what the no-cache path computes.

Each step runs under `model.lock` (the cache and workspace are the model's state). A stream
remembers the phase's runtime and its `epoch` after its step; if anything else wrote the cache
or switched the phase before its next step, it stops with an error rather than continue from a
cache that is no longer its own.
"""
from __future__ import annotations

import math
import operator

import torch


# The smallest temperature a float32 logit is divided by (float32's smallest normal number):
# below it the scalar rounds to 0 in float32 (0 / 0 = NaN) while the distribution is already
# the argmax's.
MIN_TEMPERATURE = float(torch.finfo(torch.float32).tiny)


def probabilities(logits, temperature: float, top_k):
    """The distribution (B, V) that `sample` draws from at `temperature` (> 0) and `top_k`: the
    one place both are applied (speculative decoding scores its draft and its target with it)."""
    # The top k are chosen on the logits themselves (the order a temperature keeps): at huge
    # temperatures the scaled logits below are all 0 and could not tell them apart.
    if top_k is not None:
        kth_best = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        removed = logits < kth_best
    # Shifted by the row max first: the same distribution, and no inf - inf at tiny temperatures.
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None:
        logits = logits.masked_fill(removed, float("-inf"))
    return torch.softmax(logits, dim=-1)


def sample(logits, temperature: float, top_k, generator):
    """Next token (B, 1) from logits (B, V): sampled at `temperature`; greedy (the argmax, the
    limit as the temperature goes to 0) at 0 and below MIN_TEMPERATURE."""
    if temperature < MIN_TEMPERATURE:
        return logits.argmax(dim=-1, keepdim=True)
    probs = probabilities(logits, temperature, top_k)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def _as_int(value, name: str, low: int) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}") from None
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def check_args(model, idx, max_new_tokens, temperature, top_k, generator):
    """The arguments of generate, checked (ValueError / TypeError): (max_new_tokens, temperature
    as a float, top_k)."""
    model.check_idx(idx, max_len=None)  # longer prompts are cropped to the last block_size
    max_new_tokens = _as_int(max_new_tokens, "max_new_tokens", 0)
    if (not isinstance(temperature, (int, float)) or isinstance(temperature, bool)
            or math.isnan(temperature) or temperature < 0):
        raise ValueError(f"temperature must be a number >= 0 (0.0 = greedy, inf = uniform), "
                         f"got {temperature!r}")
    if top_k is not None:
        top_k = _as_int(top_k, "top_k", 1)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return max_new_tokens, float(temperature), top_k


def token_buffer(B, length, device):
    """An uninitialised (B, length) LongTensor for a run's tokens (ValueError if it cannot exist)."""
    try:
        return torch.empty(B, length, dtype=torch.long, device=device)
    except RuntimeError as exc:  # e.g. max_new_tokens = 10**13
        raise ValueError(f"cannot allocate the token buffer for {B} x {length} tokens "
                         f"({8 * B * length:.3g} bytes); ask for fewer new tokens") from exc


def _interrupted():
    return RuntimeError(
        "generate_stream: the model was used by another call since this stream's last step "
        "(another generate or stream, prefill, decode or set_phase wrote its KV cache or "
        "switched its phase), so this stream cannot continue. Finish one stream before "
        "starting the next on the same model, or use one model per stream.")


def _generate(model, idx, max_new_tokens, temperature, top_k, generator, one_at_a_time):
    """The tokens of a run: yields (tokens, n, count) after writing its new tokens n .. n +
    count - 1 into `tokens` (B, T0 + max_new_tokens), whose first T0 columns are idx.
    one_at_a_time: count is always 1 (a stream); else greedy decoding through the KV cache
    runs as many steps as the cache holds in one call (one C++ call with fused decode)."""
    max_new_tokens, temperature, top_k = check_args(model, idx, max_new_tokens, temperature,
                                                    top_k, generator)
    block_size = model.config.block_size
    B, T0 = idx.shape
    # All tokens of the run, written in place: no per-step concatenation.
    tokens = token_buffer(B, T0 + max_new_tokens, idx.device)
    tokens[:, :T0] = idx
    use_cache, greedy = model.phase.opt.kv_cache, temperature < MIN_TEMPERATURE
    mark = None  # (the runtime, its epoch) after this run's last step
    n, end = T0, T0 + max_new_tokens
    while n < end:
        count = 1
        with model.lock:  # held for the step, not across the yield
            rt = model.phase
            if mark is not None and (rt is not mark[0] or rt.epoch != mark[1]):
                raise _interrupted()
            if use_cache and mark is not None and rt.cache_length < block_size:
                # the runtime's own step (GPT.decode_greedy_step / decode_step without their
                # no_grad and lock, which this loop holds); greedy: the argmax in the step
                # itself, and as many steps as the cache holds in one call
                if greedy:
                    if not one_at_a_time:
                        count = min(end - n, block_size - rt.cache_length)
                    rt.decode_greedy_run(model, tokens, n, count)
                else:
                    tokens[:, n:n + 1] = sample(rt.decode(model, tokens[:, n - 1:n]),
                                                temperature, top_k, generator)
            else:
                window = tokens[:, max(0, n - block_size):n]
                if use_cache:  # first step, or cache full (positions shift): fill it again
                    if rt.kv_caches is None or rt.kv_caches[0].max_batch < B:
                        model.setup_caches(max_batch=B)
                    logits = model.prefill(window)
                else:  # a full forward over the last block_size tokens
                    if mark is None:  # the weights as they are now (prefill does this itself)
                        rt.refresh(model)
                    logits = model.forward_last(window)
                tokens[:, n:n + 1] = sample(logits, temperature, top_k, generator)
            mark = (rt, rt.epoch)
        yield tokens, n, count
        n += count


@torch.no_grad()
def generate_stream(model, idx, max_new_tokens, temperature=0.0, top_k=None, generator=None):
    for tokens, n, _ in _generate(model, idx, max_new_tokens, temperature, top_k, generator,
                                  one_at_a_time=True):
        yield tokens[:, n:n + 1]


@torch.no_grad()
def generate_chunks(model, idx, max_new_tokens, temperature=0.0, top_k=None, generator=None):
    """generate_stream at the granularity of the calls: each yield the new tokens (B, k) that
    one call computed (greedy with fused decode, every step the KV cache holds at once)."""
    for tokens, n, count in _generate(model, idx, max_new_tokens, temperature, top_k, generator,
                                      one_at_a_time=False):
        yield tokens[:, n:n + count]


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=0.0, top_k=None, generator=None):
    tokens = None  # the run's buffer, once a token is written (max_new_tokens = 0: none)
    with model.lock:  # one whole generation at a time per model
        for tokens, _, _ in _generate(model, idx, max_new_tokens, temperature, top_k,
                                      generator, one_at_a_time=False):
            pass
    return idx.clone() if tokens is None else tokens
