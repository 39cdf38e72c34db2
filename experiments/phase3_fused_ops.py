"""Phase 3: phase 2 + fused LayerNorm (6), segment-reduced embedding backward (7) and fast init (8); reported unavailable where the ops cannot be built.

Run: `python experiments/phase3_fused_ops.py [--tiny] [--new-tokens N] [--runs N] [--threads N] [--checkpoint DIR]`
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import phase_main  # noqa: E402

PRESET = "phase3"
DESCRIPTION = "phase 2 + fused LayerNorm, embedding backward, fast init"


def main(argv=None) -> int:
    return phase_main(PRESET, DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(main())
