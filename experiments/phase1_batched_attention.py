"""Phase 1: batched attention (bottlenecks 1, 2: Q @ K^T and att @ V as batched matmuls) and a preallocated workspace (3a).

Run: `python experiments/phase1_batched_attention.py [--tiny] [--new-tokens N] [--runs N] [--threads N] [--checkpoint DIR] [--traces LOGDIR]`
"""
from smallmind_torch.cli.experiment import experiment_main

PRESET = "phase1"
DESCRIPTION = "batched attention + preallocated workspace"
main = experiment_main(PRESET, DESCRIPTION)

if __name__ == "__main__":
    raise SystemExit(main())
