"""Phase 2: phase 1 + static KV cache (3b), fused causal softmax (4) and the blocked GEMM (5) as custom C++ ops; reported unavailable where the ops cannot be built.

Run: `python experiments/phase2_kv_cache_custom_ops.py [--tiny] [--new-tokens N] [--runs N] [--threads N] [--checkpoint DIR]`
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import phase_main  # noqa: E402

PRESET = "phase2"
DESCRIPTION = "phase 1 + KV cache + custom softmax and GEMM"


def main(argv=None) -> int:
    return phase_main(PRESET, DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(main())
