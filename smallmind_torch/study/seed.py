"""The seed study's figures (SmallMind, C#/.NET, 4-core x64; docs/study.md), shown beside ours."""
from __future__ import annotations

SEED = {
    "baseline": {"tokens_per_s": 6.2, "mb_per_token": 46.9, "prefill_ms": 48.0,
                 "gflops_512": 16.1, "gc_gen0_per_50_tokens": 450},
    "phase1_target": {"tokens_per_s": (27, 31), "mb_per_token": (8, 12), "prefill_ms": (12, 15),
                      "gc_gen0_per_50_tokens": 50},
    "final_target": {"tokens_per_s": (70, 117), "mb_per_token": (3, 5), "prefill_ms": (4, 6),
                     "gflops_512": (27, 34), "gc_gen0_per_50_tokens": 10},
}

# The seed's time split of its baseline, in percent; it measured no other category.
SEED_SPLIT = {"attention_scores": "40-50", "attention_values": "30-40", "softmax": "5-8",
              "layernorm": "<5"}
