"""`max` measured on this machine: which of the runnable MAX_CANDIDATES is fastest, timed once
and cached.

A kernel tuned on one CPU can lose to the library on another, so a fixed list cannot say what
is fastest everywhere. On first use for a model shape and thread count, each candidate runs
the study's generation in miniature on the model itself, in a runtime of its own: a prefill
of a 16-token prompt (half the context where that is shorter) and a few decode steps,
candidates alternating round by round after one warm-up round, the score being the median
prefill plus 49 median decode steps (the protocol's 50 tokens). A candidate whose logits or
greedy tokens differ from `reference` (the study's check, check.ReferenceRun: for int8 weights,
reference's forms on the same int8 weights, config.reference_for, logits within
config.check_tolerance) is never chosen. The choice and its times go into
`max.json` in the ops build directory, which is keyed by everything the kernels depend on
(torch installation, compiler, CPU, sources), so a new machine or a rebuilt library measures
again. `SMALLMIND_MAX=first` skips the measurement (the first runnable candidate, in list
order), as the tests do for speed and determinism.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import ops
from .check import ReferenceRun
from .config import OptConfig, check_tolerance
from .runtime import Phase, PhaseRuntime

PROMPT_LEN = 16      # as the study's protocol
NEW_TOKENS = 50
DECODE_STEPS = 8     # timed per round; the score extrapolates to NEW_TOKENS - 1
ROUNDS = 3
TOLERANCE = 1e-4     # max |logit difference| against reference, as the study checks


@dataclass(frozen=True)
class Choice:
    label: str
    times_ms: dict      # label -> estimated ms for the protocol's 50 tokens (None: incorrect)
    source: str         # "measured now" | "cached" | "fixed order"

    def describe(self) -> str:
        if not self.times_ms:
            return self.source
        times = ", ".join(f"{k} {'wrong' if v is None else f'{v:.1f} ms'}"
                          for k, v in self.times_ms.items())
        return f"{self.source}: {times} for {NEW_TOKENS} tokens"


def _cache_file() -> Path:
    return ops.build_directory() / "max.json"


def _key(model, preset: str) -> str:
    c = model.config
    return (f"{preset}: n_layer={c.n_layer} n_head={c.n_head} n_embd={c.n_embd} vocab={c.vocab_size} "
            f"block={c.block_size} threads={torch.get_num_threads()} isa={ops.isa()}")


def _read_cache() -> dict:
    """The cache file's entries; an unreadable file (missing, not JSON, nested past what the
    parser takes) is an empty cache, measured again and rewritten."""
    try:
        data = json.loads(_cache_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, RecursionError):
        return {}


def _valid_entry(entry, candidates) -> bool:
    """An entry this code wrote for these candidates: the chosen one among them, and a time
    (finite ms >= 0, or None: wrong) for every one of them."""
    if not isinstance(entry, dict) or entry.get("chosen") not in candidates:
        return False
    times = entry.get("times_ms")
    return (isinstance(times, dict) and set(times) == set(candidates)
            and all(t is None or (isinstance(t, (int, float)) and not isinstance(t, bool)
                                  and math.isfinite(t) and t >= 0) for t in times.values())
            and times[entry["chosen"]] is not None)


def _write_cache(key: str, entry: dict) -> None:
    path = _cache_file()
    data = _read_cache()
    data[key] = entry
    tmp = path.with_name(f".max.json.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs a measurement next time
        tmp.unlink(missing_ok=True)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(model, candidates: dict) -> dict:
    """label -> estimated ms for the protocol's generation on `model` (None: incorrect, i.e.
    not the output of reference_for(candidate): check.ReferenceRun, the study's check, on the
    tuning prompt). Each candidate runs in a runtime of its own (`model.using`); the model's
    phase is as it was afterwards."""
    g = torch.Generator().manual_seed(0)
    block = model.config.block_size
    prompt_len = min(PROMPT_LEN, max(1, block // 2))  # a small context holds a shorter prompt
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=g)
    steps = min(DECODE_STEPS, block - prompt_len)
    reference = ReferenceRun(model, prompt, prompt, steps + 1)
    runtimes = {label: _runtime(model, label, opt) for label, opt in candidates.items()}
    times = {label: ([], []) for label in candidates}
    wrong = set()
    for round_ in range(ROUNDS + 1):  # round 0 checks and warms up (first calls allocate)
        for label, opt in candidates.items():
            if label in wrong:
                continue
            expected = reference.outputs(model, opt)[1]
            with torch.no_grad(), model.using(runtimes[label]):
                if round_ == 0:
                    logits_of_prompt = model(prompt)
                prefill_s = _timed(lambda: model.prefill(prompt))
                logits = model.prefill(prompt)
                chosen, decode = [int(logits.argmax())], []
                for i in range(steps):  # fed reference's tokens: the steps are the same work
                    start = time.perf_counter()
                    logits = model.decode_step(expected[i].view(1, 1))
                    decode.append(time.perf_counter() - start)
                    chosen.append(int(logits.argmax()))
            if round_ == 0:
                max_diff, mismatch = reference.compare(model, opt, logits_of_prompt, chosen)
                if not (max_diff <= check_tolerance(opt, TOLERANCE) and mismatch is None):
                    wrong.add(label)
                continue
            times[label][0].append(prefill_s)
            times[label][1].append(statistics.median(decode) if decode else 0.0)
    return {label: None if label in wrong else
            1e3 * (statistics.median(p) + (NEW_TOKENS - 1) * statistics.median(d))
            for label, (p, d) in times.items()}


def _runtime(model, label: str, opt: OptConfig) -> PhaseRuntime:
    return PhaseRuntime(model, Phase(label, opt, label, opt))


def choose(model, candidates: "dict[str, OptConfig]", preset: str = "max") -> Choice:
    """The fastest correct candidate for `model` on this machine (cached after the first time);
    `candidates` are the runnable ones of MAX_PRESETS[preset], in its order."""
    if len(candidates) == 1 or os.environ.get("SMALLMIND_MAX") == "first":
        return Choice(next(iter(candidates)), {}, "fixed order")
    key = _key(model, preset)
    entry = _read_cache().get(key)
    if _valid_entry(entry, candidates):  # anything else is measured again and overwritten
        return Choice(entry["chosen"], entry["times_ms"], "cached")
    print(f"smallmind: choosing {preset} for this machine ({len(candidates)} candidates, "
          f"{model.config.n_layer} layers x {model.config.n_embd}, "
          f"{torch.get_num_threads()} threads; a few seconds, once)", file=sys.stderr)
    times = measure(model, candidates)
    correct = {k: v for k, v in times.items() if v is not None}
    if not correct:  # cannot happen while the last candidate is plain PyTorch
        return Choice(next(iter(candidates)), times, "fixed order (none measured correct)")
    chosen = min(correct, key=correct.get)
    _write_cache(key, {"chosen": chosen, "times_ms": times,
                       "measured": time.strftime("%Y-%m-%d %H:%M:%S")})
    return Choice(chosen, times, "measured now")
