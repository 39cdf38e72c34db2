"""The reference preset: plain PyTorch (F.softmax, F.layer_norm, masked matmul attention), no cache.

Run: `python experiments/reference.py [--tiny] [--new-tokens N] [--runs N] [--threads N] [--checkpoint DIR]`
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import phase_main  # noqa: E402

PRESET = "reference"
DESCRIPTION = "plain PyTorch reference forms"


def main(argv=None) -> int:
    return phase_main(PRESET, DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(main())
