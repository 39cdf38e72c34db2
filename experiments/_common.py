"""Shared `main` of the one-preset experiment scripts.

Each `experiments/<phase>.py` measures its preset with the study's protocol (STUDY.md), on
random weights with a fixed seed (or `--checkpoint DIR`), checked against `reference` on the
same weights, and prints its figures, the time split and the roofline fractions.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python experiments/x.py` from anywhere
    sys.path.insert(0, str(ROOT))


def phase_main(preset: str, description: str, argv=None, extra_presets: "dict | None" = None) -> int:
    """Measure `preset` (and `extra_presets`, name -> OptConfig, in the same run)."""
    from smallmind_torch.bench_cli import (_threads, add_common_arguments, add_settings_arguments,
                                           build_model, print_study, settings_from_args)
    from smallmind_torch.harness import run_study

    p = argparse.ArgumentParser(description=f"{preset}: {description}")
    add_settings_arguments(p)
    add_common_arguments(p)
    p.add_argument("--peers", nargs="*", default=[], help="peers to measure too (e.g. hf)")
    p.add_argument("--json", default=None, help="write the results as JSON")
    p.add_argument("--traces", default=None, metavar="LOGDIR",
                   help="also write this preset's profiler traces under LOGDIR")
    args = p.parse_args(argv)
    settings = settings_from_args(args)
    with _threads(args.threads):
        model, prompt, weights = build_model(args)
        phases = {preset: preset, **(extra_presets or {})}
        study = run_study(model, phases, args.peers, settings, progress=not args.no_progress,
                          weights=weights, prompt=prompt)
        print(f"== {preset}: {description}")
        print_study(study)
        if args.traces:
            from smallmind_torch.traces import print_trace_summary, write_traces

            print_trace_summary(write_traces(model, preset, args.traces,
                                             prompt_len=4 if args.tiny else 16))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(study.to_dict(), indent=2, default=str) + "\n")
    result = study.phases[preset]
    return 0 if result.status in ("ok", "unavailable") else 1
