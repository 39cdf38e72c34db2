"""How a preset scales: generation throughput against batch size, and the decode step's time
against position, where the KV cache and the fused kernels pay off or do not.

- `measure_batches(model, preset, batches)`: total tokens/s (batch x new tokens / time) of a
  greedy generation at each batch size, prefill included (the protocol at batch B);
- `measure_positions(model, preset, positions)`: ms of one decode step at each position: with
  a KV cache, one `decode_step` after a prefill to that position; without, the full forward
  over the prefix that the no-cache generation runs for that token.
"""
from __future__ import annotations

import torch

from ...config import OptConfig
from ...ops import CustomOpsUnavailable
from ..protocol.settings import fixed_prompt
from ..protocol.timing import sample_times, spread
from ..results import ScalingResult
from .preset import measure_generation


def default_positions(block_size: int, points: int = 16) -> list:
    """About `points` positions spread over 1..block_size - 1, both ends included."""
    step = max(1, (block_size - 1) // (points - 1))
    return sorted({*range(1, block_size, step), block_size - 1})


def _decode_ms_at(model, position: int, repeat: int) -> float:
    g = torch.Generator().manual_seed(position)
    prefix = torch.randint(0, model.config.vocab_size, (1, position + 1), generator=g)
    if not model.phase.opt.kv_cache:  # the no-cache step at this position: a forward over the prefix
        times = sample_times(lambda: model.forward_last(prefix), warmup=1, repeat=repeat)
        return 1e3 * min(times)
    token = prefix[:, -1:]
    times = []
    for _ in range(repeat + 1):  # the first is a warm-up
        model.prefill(prefix[:, :-1])
        times.append(sample_times(lambda: model.decode_step(token), warmup=0, repeat=1)[0])
    return 1e3 * min(times[1:])


def measure_scaling(model, preset: "str | OptConfig", *, batches=(1, 4, 16), positions=None,
                    new_tokens: int = 50, prompt_len: int = 16, runs: int = 3, repeat: int = 3,
                    seed: int = 1234, name: "str | None" = None) -> ScalingResult:
    """Both curves of `preset` on `model`'s weights; the model's phase is restored after."""
    name = name or (preset if isinstance(preset, str) else "custom")
    result = ScalingResult(name, "ok")
    try:
        with model.using(preset):
            result.phase = model.phase.description
            prompt = fixed_prompt(model.config, prompt_len, seed)
            for B in batches:
                _, runs_of = measure_generation(model, prompt.expand(B, -1).contiguous(), new_tokens, runs)
                s = spread([B * r for r in runs_of["tokens_per_s"]],
                           runs_of.get("other_cores", [None])[0])
                result.tokens_per_s_by_batch[B], result.batch_spread[B] = s["median"], s
            with torch.no_grad():
                for p in positions or default_positions(model.config.block_size):
                    result.decode_ms_by_position[p] = _decode_ms_at(model, p, repeat)
    except CustomOpsUnavailable as exc:
        result.status, result.reason = "unavailable", str(exc)
    except Exception as exc:  # noqa: BLE001 - reported in the row
        result.status, result.reason = "error", f"{type(exc).__name__}: {exc}"
    return result
