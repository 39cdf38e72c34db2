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
config.check_tolerance) is never chosen, nor is a candidate on a lossy weight format
(config.LOSSY_FORMS, e.g. `max-int8`'s and `max-int4`'s) whose next-token distributions are too far from fp32
reference's: its mean KL divergence, teacher-forced over QUALITY_WINDOWS fixed windows of
random token ids (divergence.py), must be at most config.MAX_INT8_MEAN_KL (a check against its
own reference cannot see a format that is wrong in itself: the reference runs on the same
rounded weights). The choice and its times (and each lossy candidate's mean KL) go into
`max.json` in the ops build directory, which is keyed by everything the kernels depend on
(torch installation, compiler, CPU, sources), so a new machine or a rebuilt library measures
again. `SMALLMIND_MAX=first` skips the measurement (the first runnable candidate, in list
order), as the tests do for speed and determinism.

A measurement made while the machine was busy would choose for good from the neighbours'
load (it once picked a candidate 2.5x slower than the best for every later run), so each
one knows whether the machine was quiet: the cores other processes kept busy meanwhile
(machine_load.py), the spread of the chosen candidate's rounds and, where the weights outgrow
the caches, its time against its memory roofline (roofline_ms). A disturbed measurement
is made again, ATTEMPTS times at most; if it stays disturbed its choice serves this process,
is not cached, and stderr says so. The cache entry keeps each candidate's rounds and the
machine's load; `smallmind tune` shows them and measures again on demand.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import ops
from .check import ReferenceRun
from .config import LOSSY_FORMS, MAX_INT8_MEAN_KL, OptConfig, check_tolerance
from .divergence import mean_kl, windows_of
from .machine_load import busy, machine_load, memory_bandwidth_gbs, uneven
from .runtime import Phase, PhaseRuntime
from .weight_formats import decode_weight_bytes

PROMPT_LEN = 16      # as the study's protocol
NEW_TOKENS = 50
ROUNDS = 3
TIE_RATIO = 1.05     # medians this close to the fastest's are a tie (fastest_beyond_noise)
TOLERANCE = 1e-4     # max |logit difference| against reference, as the study checks
QUALITY_WINDOWS = 2  # of QUALITY_TOKENS random ids (the context where shorter): the KL bound's
QUALITY_TOKENS = 64  # stream, a few ms per candidate at the seed shape
ATTEMPTS = 3         # measurements at most while the machine stays disturbed
# A choice that took more than ROOFLINE_SLACK times its memory roofline was not timed on a quiet
# machine; judged where the weights outgrow the caches (ROOFLINE_MIN_BYTES), so that a decode
# step is bound by reading them: below, a step's cost is overhead and the bound says nothing.
ROOFLINE_SLACK = 4.0
ROOFLINE_MIN_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Choice:
    label: str
    times_ms: dict      # label -> estimated ms for the protocol's 50 tokens (None: not chosen)
    source: str         # "measured now" | "cached" | "fixed order" | "... not cached ..."
    mean_kl: dict = field(default_factory=dict)  # lossy candidates: label -> mean KL (nats)

    def describe(self) -> str:
        if not self.times_ms:
            return self.source
        times = ", ".join(f"{k} {self._why_not(k) if v is None else f'{v:.1f} ms'}"
                          for k, v in self.times_ms.items())
        return f"{self.source}: {times} for {NEW_TOKENS} tokens"

    def _why_not(self, label: str) -> str:
        kl = self.mean_kl.get(label)
        return "wrong" if kl is None or kl <= MAX_INT8_MEAN_KL else over_bound(kl)


def over_bound(kl: float) -> str:
    """What a candidate over the quality bound is told (stderr, the cache, the description)."""
    return f"over the quality bound (mean KL {kl:.3g} nats > {MAX_INT8_MEAN_KL:g})"


def cache_file() -> Path:
    return ops.build_directory() / "max.json"


def _key(model, preset: str) -> str:
    """The shape, thread count, ISA and C++ sources a choice was measured for: a change of
    the kernels' sources measures again (its choice was made on the old kernels)."""
    c = model.config
    return (f"{preset}: n_layer={c.n_layer} n_head={c.n_head} n_embd={c.n_embd} vocab={c.vocab_size} "
            f"block={c.block_size} threads={torch.get_num_threads()} isa={ops.isa()} "
            f"sources={ops.sources_digest()}")


def _read_cache() -> dict:
    """The cache file's entries; an unreadable file (missing, not JSON, nested past what the
    parser takes) is an empty cache, measured again and rewritten."""
    try:
        data = json.loads(cache_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, RecursionError):
        return {}


def cached_entry(model, preset: str = "max") -> "dict | None":
    """What max.json holds for `model`'s shape and this machine's thread count and ISA (the
    chosen candidate, its times, rounds and the machine's load when measured), or None."""
    entry = _read_cache().get(_key(model, preset))
    return entry if isinstance(entry, dict) else None


def _valid_entry(entry, candidates) -> bool:
    """An entry this code wrote for these candidates: the chosen one among them, a time
    (finite ms >= 0, or None: not chosen) for every one of them, and a mean KL for every lossy
    one (an entry from before the quality bound is measured again)."""
    if not isinstance(entry, dict) or entry.get("chosen") not in candidates:
        return False
    times, kls = entry.get("times_ms"), entry.get("mean_kl", {})
    return (isinstance(times, dict) and set(times) == set(candidates)
            and all(t is None or _non_negative(t) for t in times.values())
            and times[entry["chosen"]] is not None
            and isinstance(kls, dict) and set(kls) == set(_lossy(candidates))
            and all(_non_negative(kl) for kl in kls.values()))


def _non_negative(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


def _lossy(candidates: dict) -> dict:
    return {label: opt for label, opt in candidates.items() if ("weights", opt.weights) in LOSSY_FORMS}


def _write_cache(key: str, entry: dict) -> None:
    path = cache_file()
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
    """label -> the ms of `generate` for the protocol's NEW_TOKENS greedy tokens (fewer where
    the context is shorter, scaled to NEW_TOKENS) on `model`, in each of the ROUNDS timed
    rounds, the candidates alternating (None: incorrect, i.e. not the output of
    reference_for(candidate): check.ReferenceRun, the study's check, on the tuning prompt).
    What is timed is what a user runs: with fused decode the prefill and then every step in
    one C++ call, whose first steps after a prefill pay for the caches it left. Each candidate
    runs in a runtime of its own (`model.using`); the model's phase is as it was afterwards."""
    g = torch.Generator().manual_seed(0)
    block = model.config.block_size
    prompt_len = min(PROMPT_LEN, max(1, block // 2))  # a small context holds a shorter prompt
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=g)
    steps = min(NEW_TOKENS - 1, block - prompt_len)  # decode steps after the prompt's token
    reference = ReferenceRun(model, prompt, prompt, steps + 1)
    runtimes = {label: _runtime(model, label, opt) for label, opt in candidates.items()}
    times = {label: [] for label in candidates}
    wrong = set()
    for round_ in range(ROUNDS + 1):  # round 0 checks and warms up (first calls allocate)
        for label, opt in candidates.items():
            if label in wrong:
                continue
            with torch.no_grad(), model.using(runtimes[label]):
                if round_ > 0:
                    times[label].append(_timed(lambda: model.generate(prompt, steps + 1)))
                    continue
                expected = reference.outputs(model, opt)[1]
                logits_of_prompt = model(prompt)
                logits = model.prefill(prompt)
                chosen = [int(logits.argmax())]
                for i in range(steps):  # fed reference's tokens: each step checked
                    logits = model.decode_step(expected[i].view(1, 1))
                    chosen.append(int(logits.argmax()))
                model.generate(prompt, steps + 1)  # warm-up of the timed path
            max_diff, mismatch = reference.compare(model, opt, logits_of_prompt, chosen)
            if not (max_diff <= check_tolerance(opt, TOLERANCE) and mismatch is None):
                wrong.add(label)
    scale = 1e3 * NEW_TOKENS / (steps + 1)
    return {label: None if label in wrong else [scale * t for t in runs]
            for label, runs in times.items()}


def fastest_beyond_noise(rounds_ms: dict, order) -> str:
    """The candidate to choose from each one's timed rounds (None: not allowed): the first, in
    the preset's `order` (its preferred forms first), of those the fastest does not beat
    beyond the noise: whose median is within TIE_RATIO of the fastest's median, or whose
    fastest round is no slower than the fastest's slowest. The fused forms differ by a
    prefill's share of 50 tokens, which a few rounds cannot rank: choosing the fastest median
    among them would let the noise (a busy machine's most of all) decide."""
    medians = {k: statistics.median(r) for k, r in rounds_ms.items() if r}
    best = min(medians, key=medians.get)
    return next(k for k in order if k in medians and (
        medians[k] <= TIE_RATIO * medians[best] or min(rounds_ms[k]) <= max(rounds_ms[best])))


def roofline_ms(model, weights: str = "fp32") -> "float | None":
    """The protocol's NEW_TOKENS at the memory roofline: the bytes of weights a decode step
    reads in the format `weights` (weight_formats.decode_weight_bytes), once per token, at the
    read bandwidth measured now over a buffer of that size; None below ROOFLINE_MIN_BYTES."""
    nbytes = decode_weight_bytes(model, weights)
    if nbytes < ROOFLINE_MIN_BYTES:
        return None
    return NEW_TOKENS * nbytes / (memory_bandwidth_gbs(nbytes, repeat=3) * 1e9) * 1e3


def disturbances(rounds_ms: dict, chosen: str, other_cores: "float | None",
                 roofline: "float | None" = None) -> list:
    """Why a measurement cannot be trusted ([] when the machine was quiet): other processes
    kept QUIET_OTHER_CORES or more busy, the chosen candidate's rounds differ by more than
    DISTURBED_RATIO (a burst that slowed some rounds and not others), or its time is more than
    ROOFLINE_SLACK times its memory roofline (`roofline`, ms; a slowdown that lasted every
    round, which the machine's load does not show, e.g. a neighbour on the same host)."""
    why = []
    if busy(other_cores):
        why.append(f"other processes kept {other_cores:.2f} cores busy")
    rounds = rounds_ms.get(chosen) or []
    if rounds and uneven(rounds):
        why.append(f"{chosen}'s rounds differ by {max(rounds) / min(rounds):.2f}x")
    if rounds and roofline and statistics.median(rounds) > ROOFLINE_SLACK * roofline:
        why.append(f"{chosen} took {statistics.median(rounds):.1f} ms, "
                   f"{statistics.median(rounds) / roofline:.1f}x its memory roofline ({roofline:.1f} ms)")
    return why


def quality_windows(model) -> torch.Tensor:
    """The KL bound's evaluation stream: QUALITY_WINDOWS windows of QUALITY_TOKENS fixed
    random token ids (the model's context where that is shorter)."""
    length = min(QUALITY_TOKENS, model.config.block_size)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, model.config.vocab_size, (QUALITY_WINDOWS * length + 1,), generator=g)
    return windows_of(tokens, length)


def measure_quality(model, candidates: dict) -> dict:
    """label -> mean KL(p_fp32 || p_candidate) in nats over quality_windows, for the candidates
    on a lossy weight format (the others are fp32 reference's up to float rounding)."""
    lossy = _lossy(candidates)
    return mean_kl(model, lossy, quality_windows(model)) if lossy else {}


def _runtime(model, label: str, opt: OptConfig) -> PhaseRuntime:
    return PhaseRuntime(model, Phase(label, opt, label, opt))


def choose(model, candidates: "dict[str, OptConfig]", preset: str = "max", *,
           force: bool = False) -> Choice:
    """The fastest correct candidate for `model` on this machine (cached after the first quiet
    measurement; `force` measures again); `candidates` are the runnable ones of
    MAX_PRESETS[preset], in its order."""
    if len(candidates) == 1 or os.environ.get("SMALLMIND_MAX") == "first":
        return Choice(next(iter(candidates)), {}, "fixed order")
    key = _key(model, preset)
    entry = _read_cache().get(key)
    if not force and _valid_entry(entry, candidates):  # else measured again and overwritten
        return Choice(entry["chosen"], entry["times_ms"], "cached", entry.get("mean_kl", {}))
    print(f"smallmind: choosing {preset} for this machine ({len(candidates)} candidates, "
          f"{model.config.n_layer} layers x {model.config.n_embd}, "
          f"{torch.get_num_threads()} threads; a few seconds, once)", file=sys.stderr)
    kls = measure_quality(model, candidates)
    over = {label for label, kl in kls.items() if kl > MAX_INT8_MEAN_KL}
    for label in over:
        print(f"smallmind: {preset}: not {label}: {over_bound(kls[label])}", file=sys.stderr)
    allowed = {k: v for k, v in candidates.items() if k not in over}
    for attempt in range(1, ATTEMPTS + 1):
        with machine_load() as load:
            rounds = measure(model, allowed)
        rounds = {label: rounds.get(label) for label in candidates}  # None: wrong, over the bound
        times = {k: None if r is None else statistics.median(r) for k, r in rounds.items()}
        correct = {k: v for k, v in times.items() if v is not None}
        if not correct:  # only where every lossy candidate is over the bound (the last fp32
            # candidate is plain PyTorch, correct by definition)
            return Choice(next(iter(candidates)), times,
                          "fixed order (none measured correct and within the quality bound)", kls)
        chosen = fastest_beyond_noise(rounds, candidates)
        bound = roofline_ms(model, candidates[chosen].weights)
        disturbed = disturbances(rounds, chosen, load.other_cores, bound)
        if not disturbed:
            break
        print(f"smallmind: {preset}: the measurement was disturbed ({'; '.join(disturbed)})"
              + (", measuring again" if attempt < ATTEMPTS else ""), file=sys.stderr)
    if disturbed:  # this process's choice, not every later one's
        print(f"smallmind: {preset}: the machine stayed busy over {ATTEMPTS} measurements: "
              f"{chosen} for this process only, not cached", file=sys.stderr)
        return Choice(chosen, times, f"measured now, not cached ({'; '.join(disturbed)})", kls)
    _write_cache(key, {"chosen": chosen, "times_ms": times, "mean_kl": kls,
                       "over_quality_bound": {label: over_bound(kls[label]) for label in over},
                       "rounds_ms": rounds, "other_cores": load.other_cores, "roofline_ms": bound,
                       "attempts": attempt, "measured": time.strftime("%Y-%m-%d %H:%M:%S")})
    return Choice(chosen, times, "measured now", kls)
