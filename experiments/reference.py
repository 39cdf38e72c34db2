"""The reference preset: plain PyTorch (F.softmax, F.layer_norm, masked matmul attention), no cache.

Run: `python experiments/reference.py [--tiny] [--new-tokens N] [--runs N] [--threads N] [--checkpoint DIR] [--traces LOGDIR]`
"""
from smallmind_torch.cli.experiment import experiment_main

PRESET = "reference"
DESCRIPTION = "plain PyTorch reference forms"
main = experiment_main(PRESET, DESCRIPTION)

if __name__ == "__main__":
    raise SystemExit(main())
