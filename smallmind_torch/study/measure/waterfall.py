"""What each switch bought: the presets from phase0 to max, with the steps in between, each
one switch (or one preset's worth of switches) more than the one before.

Every step is measured with the protocol (correctness check first, then tokens/s; no profile);
the steps that are presets reuse the study's own result for them. The report draws the
waterfall of ms per generated token (prefill included), step by step.
"""
from __future__ import annotations

from dataclasses import asdict

from ...config import PHASES
from ...check import ReferenceRun
from ..protocol.settings import BenchSettings
from ..results import WaterfallRow
from .preset import measure_preset, reference_run

# (label, preset name or the switches flipped on top of the previous step)
STEPS = (
    ("phase0: the seed's algorithms", "phase0"),
    ("+ batched attention scores (1)", {"attention_scores": "batched"}),
    ("+ batched attention values (2)", {"attention_values": "batched"}),
    ("+ workspace (3a) = phase1", "phase1"),
    ("+ KV cache (3b)", {"kv_cache": True}),
    ("+ fused causal softmax (4)", {"softmax": "custom"}),
    ("+ custom GEMM (5) = phase2", "phase2"),
    ("+ LayerNorm, embedding, init (6-8) = phase3", "phase3"),
    ("+ fused attention", {"fused_attention": "custom"}),
    ("= max", "max"),
)


def measure_waterfall(model, settings: BenchSettings, known: "dict | None" = None, *,
                      reference: "ReferenceRun | None" = None) -> list:
    """A WaterfallRow per step of STEPS, in order. `known`: name -> PhaseResult already
    measured (the presets of the same run)."""
    known = known or {}
    settings = BenchSettings(**{**settings.to_dict(), "profile": False})
    reference = reference or reference_run(model, settings)
    rows, opt = [], None
    for label, step in STEPS:
        if isinstance(step, str):
            result = known.get(step) or measure_preset(model, step, settings,
                                                       reference=reference, name=step)
            opt = PHASES.get(step, opt)
        else:
            opt = opt.replace(**step)
            result = measure_preset(model, opt, settings, reference=reference, name=label)
        rows.append(WaterfallRow(
            label, step if isinstance(step, str) else None,
            result.opt or (asdict(opt) if opt else {}), result.status, result.reason,
            result.tokens_per_s, 1e3 / result.tokens_per_s if result.tokens_per_s else None,
            result.spread.get("tokens_per_s")))
    return rows
