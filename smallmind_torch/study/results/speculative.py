"""The result types of the speculative decoding part (measure/speculative.py): per shape, per
draft and k, what was kept, what it cost and what it gained; data only like every result
type, imported by results/__init__.py."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..data import Data


@dataclass
class SpeculativeRow(Data):
    """One draft at one k against fp32 `max`'s plain greedy decoding, on one shape."""

    draft: str                         # "ngram" or the preset that drafts
    draft_ran: str                     # what ran (for max-int8: which candidate)
    k: int
    acceptance_rate: float             # accepted / drafted
    per_token_acceptance: float        # a: kept / (kept + rejected), the formula's
    histogram: list                    # target calls that kept 0..k drafted tokens
    tokens_per_step: float             # measured tokens per target call
    expected_tokens_per_step: float    # E = (1 - a^(k+1)) / (1 - a)
    draft_cost: float                  # c: a drafted token's time / a target decode step's
    verify_cost: float                 # v: a verify call's time / a target decode step's
    predicted_speedup: float           # E / (k c + v)
    tokens_per_s: dict                 # spread() of the runs
    speedup: float                     # median tokens/s / the baseline's median
    greedy_equal: bool                 # the output is max's own greedy output
    first_mismatch: int | None = None  # else where they first differ


@dataclass
class SpeculativeShape(Data):
    """Every draft and k on one model: its shape, weights and the baseline."""

    label: str                         # "seed", "wide", "gpt2-small"
    model_config: dict
    weights: str                       # "checkpoint ..." or "random"
    target: str                        # what fp32 max ran
    prompt: str
    new_tokens: int
    runs: int
    baseline_tokens_per_s: dict        # max's plain greedy generate, spread()
    decode_step_ms: float              # max's median decode step
    weight_mb: float                   # fp32 weights one decode step reads
    rows: list[SpeculativeRow] = field(default_factory=list)


@dataclass
class SpeculativeResult(Data):
    shapes: list[SpeculativeShape]
    settings: dict
    skipped: dict = field(default_factory=dict)  # shape label -> why it was not measured
