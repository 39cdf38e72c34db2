"""The one runner behind the per-phase scripts in experiments/: each script is data (a preset
and a one-line description) and `main = experiment_main(PRESET, DESCRIPTION)`.

An experiment measures its preset with the study's protocol (docs/study.md) on random weights
with a fixed seed (or `--checkpoint DIR`), checked against `reference` on the same weights, and
prints its figures, what ran, the time split and the roofline fractions.
"""
from __future__ import annotations

import argparse
from typing import Callable

from .core import (add_model_arguments, add_settings_arguments, build_model, check_writable,
                   run_command, settings_from_args, threads_from_args)


def run_experiment(preset: str, description: str, argv=None,
                   extra_presets: "dict | None" = None) -> int:
    """Measure `preset` (and `extra_presets`, name -> OptConfig, in the same run); a bad
    argument or a missing checkpoint is one line, as on the command line."""
    p = argparse.ArgumentParser(description=f"{preset}: {description}")
    add_settings_arguments(p)
    add_model_arguments(p)
    p.add_argument("--peers", nargs="*", default=[], help="peers to measure too (e.g. hf)")
    p.add_argument("--json", default=None, help="write the results as JSON")
    p.add_argument("--traces", default=None, metavar="LOGDIR",
                   help="also write this preset's profiler traces under LOGDIR")
    args = p.parse_args(argv)
    return run_command(lambda args: _run(preset, description, args, extra_presets), args)


def _run(preset: str, description: str, args, extra_presets) -> int:
    from ..study import print_study, print_trace_summary, run_study, write_traces
    from ..study.report.markdown import write_json

    settings = settings_from_args(args)
    check_writable(args.json, "--json")
    with threads_from_args(args):
        model, prompt, weights = build_model(args)
        phases = {preset: preset, **(extra_presets or {})}
        study = run_study(model, phases, args.peers, settings, progress=not args.no_progress,
                          weights=weights, prompt=prompt)
        print(f"== {preset}: {description}")
        print_study(study)
        if args.traces:
            print_trace_summary(write_traces(model, preset, args.traces,
                                             prompt_len=settings.prompt_len))
    if args.json:
        write_json(study.to_dict(), args.json)
    result = study.phases[preset]
    return 0 if result.status in ("ok", "unavailable") else 1


def experiment_main(preset: str, description: str, extra_presets: "dict | None" = None) -> Callable:
    """The `main(argv=None) -> exit code` of one per-phase script."""
    def main(argv=None) -> int:
        return run_experiment(preset, description, argv, extra_presets)

    main.__doc__ = f"{preset}: {description}"
    return main
