"""The whole study: `smallmind study` (README, docs/study.md), as a script: every preset and
max, the Hugging Face peer and the machine limits in one run on one set of weights, every part
beyond them, profiler traces per preset into runs/, then results/REPORT.md, results.json and
the plots.

Run: `python experiments/run_all.py [--tiny] [--checkpoint DIR] [--out DIR] [--logdir DIR]
[--phases ...] [--parts ...] [--only PART] [--engine-shapes seed gpt2-small] [--threads N]`
(the same arguments as `smallmind study`).
"""
import sys

from smallmind_torch.cli import main as smallmind


def main(argv=None) -> int:
    return smallmind(["study", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
