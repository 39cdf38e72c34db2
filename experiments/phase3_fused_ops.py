"""Phase 3: phase 2 + fused LayerNorm (6), segment-reduced embedding backward (7) and fast init (8); reported unavailable where the ops cannot be built.

Run: `python experiments/phase3_fused_ops.py [--tiny] [--new-tokens N] [--runs N] [--threads N] [--checkpoint DIR] [--traces LOGDIR]`
"""
from smallmind_torch.cli.experiment import experiment_main

PRESET = "phase3"
DESCRIPTION = "phase 2 + fused LayerNorm, embedding backward, fast init"
main = experiment_main(PRESET, DESCRIPTION)

if __name__ == "__main__":
    raise SystemExit(main())
