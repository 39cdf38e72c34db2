"""max: the fastest correct combination on this device, measured against its candidates.

`config.MAX_BY_DEVICE` lists, per device, the combinations `max` picks from (fastest first;
a model takes the first its device can run). This script measures every candidate in the
same run, so the choice can be re-checked on any machine.

Run: `python experiments/max_fastest.py [--tiny] [--new-tokens N] [--runs N] [--threads N] [--checkpoint DIR]`
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import phase_main  # noqa: E402

PRESET = "max"
DESCRIPTION = "fastest correct combination"


def main(argv=None) -> int:
    from smallmind_torch.config import MAX_BY_DEVICE

    candidates = {f"max candidate {i} (cpu)": opt for i, opt in enumerate(MAX_BY_DEVICE["cpu"])}
    return phase_main(PRESET, DESCRIPTION, argv, extra_presets=candidates)


if __name__ == "__main__":
    sys.exit(main())
