"""Peers measured in the same run, on the same weights, with the same protocol: Hugging Face
transformers `GPT2LMHeadModel.generate` (greedy, its own KV cache), checked against
`reference`'s greedy tokens before it is timed."""
from __future__ import annotations

import statistics
import time
import warnings
from typing import Callable

import torch

from .harness import BenchSettings, ReferenceRun, _device_of, _first_mismatch, _progress
from .machine import environment
from .profiling import profile_steps
from .results import PeerResult, spread
from .timing import device_sync


class _TimingStreamer:
    """A transformers streamer that stamps each new token (put() is called once with the prompt,
    then once per generated token)."""

    def __init__(self, device):
        self.device = device
        self.stamps = []

    def put(self, value):
        device_sync(self.device)
        self.stamps.append(time.perf_counter())

    def end(self):
        pass


def measure_hf(model, settings: BenchSettings = BenchSettings(), *,
               reference: "ReferenceRun | None" = None, progress: bool = False) -> PeerResult:
    """`GPT2LMHeadModel.generate` on the same weights (`model.to_hf()`), greedy, its KV cache."""
    device = _device_of(model)
    env = environment(device)
    try:
        import transformers  # noqa: F401
    except ImportError:
        return PeerResult("hf", "not installed", "transformers is not installed (pip install "
                          "'smallmind-torch[hf]')", env=env)
    try:
        reference = reference or ReferenceRun(model, settings)
        hf = model.to_hf().to(device).eval()
        hf.generation_config.eos_token_id = None  # never stop early: exactly n tokens, like ours
        prompt, n = reference.prompt, settings.new_tokens
        mask = torch.ones_like(prompt)

        def generate(streamer=None):
            with torch.no_grad():
                return hf.generate(prompt, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                   do_sample=False, pad_token_id=0, streamer=streamer)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokens = generate()[0, prompt.size(1):].cpu()  # warm-up + correctness
            equal = _first_mismatch(tokens, reference.tokens) is None
            result = PeerResult("hf", "ok", tokens_equal=equal, env=env)
            if not equal:
                result.status = "FAILED"
                result.reason = "greedy tokens differ from reference's"
                return result
            rates, steps = [], []
            with _progress(settings.runs, "hf: generate", progress) as bar:
                for _ in range(settings.runs):
                    streamer = _TimingStreamer(device)
                    device_sync(device)
                    start = time.perf_counter()
                    generate(streamer)
                    device_sync(device)
                    rates.append(n / (time.perf_counter() - start))
                    # stamps: [prompt, token 1, ..., token n]; decode steps between tokens
                    intervals = [b - a for a, b in zip(streamer.stamps[1:-1], streamer.stamps[2:])]
                    if intervals:
                        steps.append(1e3 * statistics.median(intervals))
                    if bar is not None:
                        bar.update()
            result.spread = {"tokens_per_s": spread(rates), **({"decode_ms": spread(steps)} if steps else {})}
            result.tokens_per_s = result.spread["tokens_per_s"]["median"]
            result.decode_ms = result.spread["decode_ms"]["median"] if steps else None
            if settings.profile:
                def one_step():
                    yield generate()

                prof = profile_steps(one_step(), n)
                result.bytes_per_token = prof.bytes_per_token
                result.allocs_per_token = prof.allocs_per_token
        return result
    except Exception as exc:
        return PeerResult("hf", "error", f"{type(exc).__name__}: {exc}", env=env)


PEERS: dict[str, Callable] = {"hf": measure_hf}
