"""Speculative decoding against fp32 `max`'s plain greedy decoding, on one model: per draft
(DRAFTS) and k (K_VALUES), the acceptance (rate and per-call histogram), the tokens per target
call, the measured tokens/s (runs alternating with the baseline's, medians, the same prompt
and number of tokens; the greedy output checked equal to max's), the draft's and the verify
call's cost in target decode steps (c: the draft model's decode step, or prompt lookup's time
per drafted token; v: a verify call of k + 1 tokens after the prompt, each a median of its own
timing, prefills apart) and the speed-up the formula predicts from them,
E / (k c + v) (speculative.predicted_speedup), so that the break-even shows.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict

from ...check import first_mismatch
from ...model import GPT
from ...speculative import (SpeculativeConfig, expected_tokens_per_step, make_draft,
                            predicted_speedup, speculative_generate)
from ...weight_formats import decode_weight_bytes
from ..protocol.timing import sample_times, spread
from ..results import SpeculativeRow, SpeculativeShape
from .preset import measure_generation

# label -> what drafts: "ngram" (prompt lookup) or a preset of the same weights; a preset added
# to config (e.g. "max-int4") is one more line here
DRAFTS = {"ngram": "ngram", "max-int8 (self-speculative)": "max-int8"}
K_VALUES = (1, 2, 4, 6)
TARGET = "max"  # fp32: every row's output must be its own greedy output


def _timed(fn) -> tuple:
    begin = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - begin


def verify_seconds(target, prompt, k: int, repeat: int = 20) -> float:
    """Median time of one verify call of k + 1 tokens after the prompt (what a step of
    speculative decoding costs the target, without the prompt's prefill)."""
    target.prefill(prompt)
    held, tokens = target.phase.cache_length, prompt[:, -1:].repeat(1, k + 1)

    def call():
        target.rewind(held)
        target.verify(tokens)
    return statistics.median(sample_times(call, warmup=2, repeat=repeat))


def draft_step_seconds(draft, prompt, stats) -> float:
    """A drafted token's time: a model draft's median decode step (its own generation, so that
    its prefill is not counted), prompt lookup's time per drafted token slot of the run."""
    if not hasattr(draft, "model"):
        return stats.draft_s / max(stats.steps * stats.k, 1)
    _, decode = measure_generation(draft.model, prompt, 20, 3)
    return statistics.median(decode["decode_ms"]) / 1e3


def measure_speculative(model, prompt, *, label: str, weights: str, prompt_text: str,
                        new_tokens: int = 50, runs: int = 5, drafts: "dict | None" = None,
                        k_values=K_VALUES) -> SpeculativeShape:
    """Every draft of `drafts` (default DRAFTS) at every k on `model` (its phase is left as
    it was): each round times max's plain greedy generate, then every (draft, k), after one
    untimed warm-up round; (1, T) `prompt`, `new_tokens` each."""
    drafts = drafts or DRAFTS
    target = GPT(model.config).eval()  # a model of its own: the study's keeps its phase
    target.load_state_dict(model.state_dict())
    target.set_phase(TARGET)
    expected, decode = measure_generation(target, prompt, new_tokens, 3)
    step_s = statistics.median(decode["decode_ms"]) / 1e3
    made = {label_: make_draft(target, SpeculativeConfig(d)) for label_, d in drafts.items()}
    cases = [(label_, k) for label_ in drafts for k in k_values]
    times = {case: [] for case in [None, *cases]}
    last = {}
    for round_ in range(runs + 1):  # round 0: the warm-up
        for case in times:
            if case is None:
                out, seconds = _timed(lambda: target.generate(prompt, new_tokens))
            else:
                config = SpeculativeConfig(drafts[case[0]], case[1])
                (out, stats), seconds = _timed(lambda: speculative_generate(
                    target, prompt, new_tokens, config, draft=made[case[0]]))
                last[case] = (out, stats)
            if round_:
                times[case].append(new_tokens / seconds)
    base = spread(times[None])
    rows, draft_s = [], {}
    for draft_label, k in cases:
        out, stats = last[(draft_label, k)]
        a = stats.per_token_acceptance
        if draft_label not in draft_s or not hasattr(made[draft_label], "model"):
            draft_s[draft_label] = draft_step_seconds(made[draft_label], prompt, stats)
        c = draft_s[draft_label] / step_s
        v = verify_seconds(target, prompt, k) / step_s
        tps = spread(times[(draft_label, k)])
        mismatch = first_mismatch(out[0, prompt.size(1):], expected)
        draft = made[draft_label]
        rows.append(SpeculativeRow(
            draft=draft_label,
            draft_ran=(draft.model.phase.description.split(" (")[0]
                       if hasattr(draft, "model") else "prompt lookup (no model)"),
            k=k, acceptance_rate=stats.acceptance_rate, per_token_acceptance=a,
            histogram=list(stats.histogram), tokens_per_step=stats.tokens_per_step,
            expected_tokens_per_step=expected_tokens_per_step(a, k), draft_cost=c,
            verify_cost=v, predicted_speedup=predicted_speedup(a, k, c, v),
            tokens_per_s=tps, speedup=tps["median"] / base["median"],
            greedy_equal=mismatch is None, first_mismatch=mismatch))
    return SpeculativeShape(
        label=label, model_config=asdict(model.config), weights=weights,
        target=target.phase.description.split(" (")[0], prompt=prompt_text,
        new_tokens=new_tokens, runs=runs, baseline_tokens_per_s=base,
        decode_step_ms=1e3 * step_s, weight_mb=decode_weight_bytes(target) / 1e6, rows=rows)
