"""Run the whole study: every preset and max, the Hugging Face peer and the machine limits in
one run on one set of weights, profiler traces per preset into runs/, then results/REPORT.md,
results/results.json and the PNG plots.

    python experiments/run_all.py                 # seed shape, 50 tokens, 3 runs (minutes: phase 0 is slow)
    python experiments/run_all.py --tiny --out /tmp/study --logdir /tmp/study/runs   # seconds
    python experiments/run_all.py --phases reference phase1 max --checkpoint checkpoints/seed
    tensorboard --logdir runs                     # one run per phase
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from smallmind_torch.cli.core import (add_model_arguments, add_settings_arguments, build_model,
                                      check_presets, settings_from_args, threads_from_args)
from smallmind_torch.study.report import print_study, write_report
from smallmind_torch.study.run import PARTS, extend_study, run_study
from smallmind_torch.study.traces import write_traces


def keep_pictures(trace, out: Path) -> None:
    """Copy a trace's offline pictures (small) beside the report, as paths relative to it."""
    kept = []
    for picture in trace.pictures:
        target = out / "traces" / trace.name / Path(picture).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(picture, target)
        kept.append(str(target.relative_to(out)))
    trace.pictures = kept


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="the whole study: all presets, the HF peer, machine "
                                            "limits, traces and the report")
    p.add_argument("--out", default="results", help="report directory (results)")
    p.add_argument("--logdir", default="runs", help="TensorBoard log directory for the traces (runs)")
    p.add_argument("--phases", nargs="+", default=None, help="presets (default: all, and max)")
    p.add_argument("--peers", nargs="*", default=["hf"], help="peers (default: hf)")
    p.add_argument("--no-traces", action="store_true", help="skip the profiler traces")
    p.add_argument("--parts", nargs="*", default=list(PARTS), choices=PARTS,
                   help=f"parts beyond the presets' table (default: all of {', '.join(PARTS)})")
    p.add_argument("--engine-shapes", nargs="+", default=["seed"], choices=["seed", "gpt2-small"],
                   help="shapes of the peer engines part (default: seed; gpt2-small adds ~10 min)")
    add_settings_arguments(p)
    add_model_arguments(p)
    args = p.parse_args(argv)
    phases = check_presets(args.phases)
    settings = settings_from_args(args)
    start = time.perf_counter()
    with threads_from_args(args):
        model, prompt, weights = build_model(args)
        study = run_study(model, phases, args.peers, settings, progress=not args.no_progress,
                          weights=weights, prompt=prompt)
        print_study(study)
        extend_study(study, model, settings, args.parts, progress=not args.no_progress,
                     prompt=prompt, engine_shapes=args.engine_shapes)
        traces = {}
        if not args.no_traces:
            begin = time.perf_counter()
            for name in phases:
                # phase0's per-element loops make a trace of tens of MB per step: profile one
                traces[name] = t = write_traces(model, name, args.logdir,
                                                prompt_len=settings.prompt_len, seed=settings.seed,
                                                active=1 if name == "phase0" else 2)
                keep_pictures(t, Path(args.out))
                if t.status == "ok":
                    print(f"trace {name}: {t.run_dir}  split: {t.describe_split()}")
                else:
                    print(f"trace {name}: {t.status}: {t.reason}")
            study.durations["traces"] = time.perf_counter() - begin
    paths = write_report(study, args.out, traces)
    print(f"\nreport: {paths['report']}\njson:   {paths['json']}\nplots:  "
          + ", ".join(v for k, v in paths.items() if k not in ("report", "json")))
    if traces:
        print(f"traces: tensorboard --logdir {args.logdir}")
    print(f"study took {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
