"""The one runner behind the per-phase scripts in experiments/: each script is data (a preset
and a one-line description) and `main = experiment_main(PRESET, DESCRIPTION)`.

An experiment shows what its step bought. On random weights with a fixed seed (or `--checkpoint
DIR`) it measures its preset, the phase before it (STEP_BEFORE: reference -> phase0 -> phase1 ->
phase2 -> phase3 -> max) and `reference` with the study's protocol (docs/study.md: each checked
against `reference` on the same weights, then timed and profiled) and prints their figures side
by side, what ran, the time split and the roofline fractions; then the step's gain: the three
again, each in its own model, alternating run by run (so that their ratios see the same
machine), with "x previous" and "x reference". A bad argument is one line and exit code 2, a
checkpoint that cannot be read one line and exit code 1, as on the command line (core.run_command).
"""
from __future__ import annotations

import argparse
from typing import Callable

from .core import (add_model_arguments, add_settings_arguments, build_model, check_writable,
                   run_command, settings_from_args, threads_from_args)


# each per-phase script's preset -> the phase its step starts from
STEP_BEFORE = {"phase0": "reference", "phase1": "phase0", "phase2": "phase1", "phase3": "phase2",
               "max": "phase3"}


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
    previous = STEP_BEFORE.get(preset)
    compared = [name for name in ("reference", previous, preset) if name]
    with threads_from_args(args):
        model, prompt, weights = build_model(args)
        phases = {**{name: name for name in compared}, **(extra_presets or {})}
        study = run_study(model, phases, args.peers, settings, progress=not args.no_progress,
                          weights=weights, prompt=prompt)
        print(f"== {preset}: {description}")
        print_study(study)
        print_step_gain(model, study, preset, previous, settings, prompt)
        if args.traces:
            print_trace_summary(write_traces(model, preset, args.traces,
                                             prompt_len=settings.prompt_len))
    if args.json:
        write_json(study.to_dict(), args.json)
    result = study.phases[preset]
    return 0 if result.status in ("ok", "unavailable") else 1


def print_step_gain(model, study, preset: str, previous: "str | None", settings, prompt) -> None:
    """`reference`, `previous` and `preset` (those the study found correct and runnable), each
    in its own model, alternating run by run; their tokens/s, decode ms and ratios."""
    import torch

    from ..study.measure.quantized import measure_speed
    from ..study.protocol.settings import fixed_prompt
    from ..study.report.tables import step_gain_rows, text_table

    names = [n for n in ("reference", previous, preset) if n and study.phases[n].ok]
    left_out = [f"{n} ({study.phases[n].status})" for n in ("reference", previous, preset)
                if n and n not in names]
    if prompt is None:
        prompt = fixed_prompt(model.config, settings.prompt_len, settings.seed)
    speed = measure_speed(model, {n: n for n in names}, (torch.get_num_threads(),),
                          settings.runs, settings.new_tokens, prompt)
    print(f"\nthe step {previous or '-'} -> {preset}: each phase in its own model, alternating "
          f"run by run, {settings.runs} runs of {settings.new_tokens} tokens; median ± half the "
          f"range" + (f"; left out: {', '.join(left_out)}" if left_out else ""))
    print(text_table(*step_gain_rows(speed, preset, previous)))


def experiment_main(preset: str, description: str, extra_presets: "dict | None" = None) -> Callable:
    """The `main(argv=None) -> exit code` of one per-phase script."""
    def main(argv=None) -> int:
        return run_experiment(preset, description, argv, extra_presets)

    main.__doc__ = f"{preset}: {description}"
    return main
