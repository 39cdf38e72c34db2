"""Phase 0: the seed's baseline algorithms, literally (per-element attention loops, three-pass softmax, composed LayerNorm, full forward per token).

Run: `python experiments/phase0_baseline.py [--tiny] [--new-tokens N] [--runs N] [--threads N] [--checkpoint DIR] [--traces LOGDIR]`
"""
from smallmind_torch.cli.experiment import experiment_main

PRESET = "phase0"
DESCRIPTION = "the seed's baseline algorithms"
main = experiment_main(PRESET, DESCRIPTION)

if __name__ == "__main__":
    raise SystemExit(main())
