"""Phase 0: the seed's baseline algorithms, literally (per-element attention loops, three-pass softmax, composed LayerNorm, full forward per token).

Run: `python experiments/phase0_baseline.py [--tiny] [--new-tokens N] [--runs N] [--threads N] [--checkpoint DIR]`
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import phase_main  # noqa: E402

PRESET = "phase0"
DESCRIPTION = "the seed's baseline algorithms"


def main(argv=None) -> int:
    return phase_main(PRESET, DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(main())
