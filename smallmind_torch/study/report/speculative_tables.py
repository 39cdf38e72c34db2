"""The speculative decoding part as Markdown: one table per shape and a sentence on where it
breaks even (the figures: study/results/speculative.py)."""
from __future__ import annotations

from ..results import SpeculativeResult, SpeculativeShape
from .tables import md_table

NOTE = (
    "Speculative decoding (`speculative.py`, `smallmind generate --draft`): a draft proposes k "
    "tokens, fp32 `max` scores them in one call through its KV cache and keeps the longest "
    "prefix it agrees with plus one token of its own, so the output is max's own greedy output "
    "(checked: `= max`). Drafts: prompt lookup (`ngram`: the last 3, 2 or 1 tokens found "
    "earlier in the context propose what followed them) and the same weights in `max-int8`. "
    "Rows: acceptance (accepted / drafted), a (a drafted token kept given the ones before it), "
    "kept per call (target calls that kept 0..k), tokens per target call (measured, and "
    "E = (1 - a^(k+1)) / (1 - a)), c (a drafted token's time) and v (a verify call's time) in "
    "target decode steps, the predicted speed-up E / (k c + v) and the measured one: tokens/s "
    "against max's plain greedy decoding, runs alternating, medians, the same prompt and "
    "number of tokens (prefill included on both sides).")

HEADER = ["draft", "k", "acceptance", "a", "kept per call (0..k)", "tokens/call", "E",
          "c", "v", "predicted", "tokens/s", "measured", "= max"]


def shape_rows(shape: SpeculativeShape) -> list:
    return [[r.draft, r.k, f"{100 * r.acceptance_rate:.0f} %", f"{r.per_token_acceptance:.2f}",
             " ".join(map(str, r.histogram)), f"{r.tokens_per_step:.2f}",
             f"{r.expected_tokens_per_step:.2f}", f"{r.draft_cost:.2f}", f"{r.verify_cost:.2f}",
             f"{r.predicted_speedup:.2f}x", f"{r.tokens_per_s['median']:.0f}",
             f"{r.speedup:.2f}x", "yes" if r.greedy_equal else f"no (token {r.first_mismatch})"]
            for r in shape.rows]


def break_even(shape: SpeculativeShape) -> str:
    """Where it pays: the best measured row, and what a and k it takes at that c and v."""
    best = max(shape.rows, key=lambda r: r.speedup)
    lossy = [r for r in shape.rows if r.draft != "ngram"]
    line = (f"Best: {best.draft} at k = {best.k}, {best.speedup:.2f}x measured "
            f"({best.predicted_speedup:.2f}x predicted). Break-even is E = k c + v: ")
    if lossy:
        r = min(lossy, key=lambda r: r.k)
        line += (f"with the model draft at k = {r.k} (c = {r.draft_cost:.2f}, v = "
                 f"{r.verify_cost:.2f}) a call must yield {r.k * r.draft_cost + r.verify_cost:.2f} "
                 f"tokens, and it yields {r.expected_tokens_per_step:.2f}; ")
    return line + ("a draft pays where its tokens are kept often (a near 1) and a verify call "
                   "of k + 1 tokens costs little more than one decode step (v near 1, where "
                   "reading the weights dominates the step), and a model draft only where c "
                   "is well below 1.")


def markdown(result: SpeculativeResult) -> str:
    parts = []
    for shape in result.shapes:
        c = shape.model_config
        base = shape.baseline_tokens_per_s["median"]
        parts += [f"**{shape.label}** ({c['n_layer']} layers x {c['n_embd']}, vocab "
                  f"{c['vocab_size']}, {shape.weight_mb:.0f} MB of fp32 weights per decode step; "
                  f"{shape.weights}; target {shape.target}; prompt: {shape.prompt}; "
                  f"{shape.new_tokens} tokens, {shape.runs} runs): max alone {base:.0f} tokens/s, "
                  f"a decode step {shape.decode_step_ms:.2f} ms.", "",
                  md_table(HEADER, shape_rows(shape)), "", break_even(shape), ""]
    parts += [f"- {label}: not measured: {why}" for label, why in result.skipped.items()]
    return "\n".join(parts)
