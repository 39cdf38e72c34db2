"""`smallmind study`: the whole study in one run (docs/study.md): every preset, the HF peer and
the machine's limits, the parts beyond them (study.run.PARTS), profiler traces per preset, then
REPORT.md, results.json and the plots in --out. `--only PART` runs one part (or `presets`,
`traces`) again and merges it into the results.json already in --out, then renders the
report from the merged results.

    smallmind study                                   # seed shape (minutes: phase 0 is slow)
    smallmind study --tiny --out /tmp/study --logdir /tmp/study/runs   # seconds
    smallmind study --only scaling --checkpoint checkpoints/seed      # one part again
    # then runs/<phase>/<phase>.flame.html in a browser, offline (README: "Traces")
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

from .core import (PROMPT_TEXT, Command, CommandError, UsageError, add_model_arguments,
                   add_settings_arguments, build_model, check_presets, check_writable, register,
                   settings_from_args, threads_from_args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..study import PARTS, STEPS

    p.add_argument("--out", default="results", help="report directory (results)")
    p.add_argument("--logdir", default="runs", help="TensorBoard log directory for the traces (runs)")
    p.add_argument("--phases", nargs="+", default=None, metavar="PHASE",
                   help="presets (default: all; with --only, those of --out's results.json)")
    p.add_argument("--peers", nargs="*", default=["hf"], metavar="PEER",
                   help="peer engines of the main table, each in its own process (default: hf)")
    p.add_argument("--no-traces", action="store_true", help="skip the profiler traces")
    p.add_argument("--parts", nargs="*", default=list(PARTS), metavar="PART",
                   help=f"parts beyond the presets' table (default: all of {', '.join(PARTS)})")
    p.add_argument("--only", default=None, metavar="PART",
                   help=f"run only this one of {', '.join(STEPS)} and merge it into --out's "
                        "results.json, then render the report again")
    p.add_argument("--engine-shapes", nargs="+", default=["seed"], metavar="SHAPE",
                   help="shapes of the peer engines part: seed, gpt2-small (default: seed; "
                        "gpt2-small adds ~10 min)")
    add_settings_arguments(p)
    add_model_arguments(p)


def _check_choices(option: str, values, choices) -> None:
    bad = [v for v in values if v not in choices]
    if bad:
        raise UsageError(f"{option}: unknown {', '.join(map(repr, bad))}; choose from: "
                         f"{', '.join(choices)}")


def _results_to_merge_into(args):
    """The StudyResult in --out's results.json, for --only."""
    from ..study import load_study

    path = Path(args.out) / "results.json"
    if not path.exists():
        raise UsageError(f"--only merges into {path}, which does not exist: run `smallmind study` "
                         "without --only first")
    try:
        return load_study(path)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CommandError(f"cannot read {path} (from an older version?): "
                           f"{type(exc).__name__}: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from ..study import PARTS, STEPS, print_study, run_steps, write_report
    from ..study.peers.engines import PEERS
    from ..study.report.tables import describe_split
    from ..study.run import ENGINE_SHAPES

    _check_choices("--parts", args.parts, PARTS)
    _check_choices("--only", [args.only] if args.only else [], STEPS)
    _check_choices("--engine-shapes", args.engine_shapes, ENGINE_SHAPES)
    _check_choices("--peers", args.peers, PEERS)
    settings = settings_from_args(args)
    check_writable(args.out, "--out", directory=True)
    study = _results_to_merge_into(args) if args.only else None
    phases = check_presets(args.phases) if args.phases or study is None else list(study.phases)
    steps = [args.only] if args.only else ["presets", *args.parts,
                                           *([] if args.no_traces else ["traces"])]
    start = time.perf_counter()
    with threads_from_args(args):
        model, prompt, weights = build_model(args)
        if study is not None and (study.model_config != asdict(model.config) or study.weights != weights):
            raise UsageError(f"{args.out}/results.json was measured on other weights "
                             f"({study.weights}); --only needs the same model ({weights})")
        study = run_steps(model, settings, steps, study=study, phases=phases, peers=args.peers,
                          logdir=args.logdir, out=args.out, engine_shapes=args.engine_shapes,
                          progress=not args.no_progress, weights=weights, prompt=prompt,
                          prompt_text=PROMPT_TEXT if prompt is not None else None)
    if "presets" in steps:
        print_study(study)
    if "traces" in steps:
        for name, trace in study.traces.items():
            print(f"trace {name}: " + (f"{trace.run_dir}  split: {describe_split(trace.time_split)}"
                                       if trace.status == "ok" else f"{trace.status}: {trace.reason}"))
    paths = write_report(study, args.out)
    print(f"\nreport: {paths['report']}\njson:   {paths['json']}\nplots:  "
          + ", ".join(v for k, v in paths.items() if k not in ("report", "json")))
    if "traces" in steps:
        print(f"traces: {args.logdir}/<phase>/: <phase>.flame.html (any browser, offline), "
              f"<phase>.step.png, <phase>.memory.png, the Chrome trace and the TensorBoard run "
              f"(`smallmind profile` lists each with how to open it)")
    print(f"study took {time.perf_counter() - start:.0f} s")
    return 0


register(Command("study", "the whole study: presets, peers, machine limits, every part, traces "
                          "and the report (docs/study.md)", add_arguments, run))
