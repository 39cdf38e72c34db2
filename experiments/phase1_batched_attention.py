"""Phase 1: batched attention (bottlenecks 1, 2: Q @ K^T and att @ V as batched matmuls) and a preallocated workspace (3a).

Run: `python experiments/phase1_batched_attention.py [--tiny] [--new-tokens N] [--runs N] [--threads N] [--checkpoint DIR]`
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import phase_main  # noqa: E402

PRESET = "phase1"
DESCRIPTION = "batched attention + preallocated workspace"


def main(argv=None) -> int:
    return phase_main(PRESET, DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(main())
