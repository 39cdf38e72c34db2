"""Phase 2: phase 1 + static KV cache (3b), fused causal softmax (4) and the blocked GEMM (5) as custom C++ ops; reported unavailable where the ops cannot be built.

Run: `python experiments/phase2_kv_cache_custom_ops.py [--tiny] [--new-tokens N] [--runs N] [--threads N] [--checkpoint DIR] [--traces LOGDIR]`
"""
from smallmind_torch.cli.experiment import experiment_main

PRESET = "phase2"
DESCRIPTION = "phase 1 + KV cache + custom softmax and GEMM"
main = experiment_main(PRESET, DESCRIPTION)

if __name__ == "__main__":
    raise SystemExit(main())
