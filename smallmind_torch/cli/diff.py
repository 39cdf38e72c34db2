"""`smallmind diff A B`: what switching from preset A to preset B changed, op by op, read off
the profiler (study/measure/diff.py): a table per label and op, the ops only one side has, the
diff as JSON and a differential flame graph.

    smallmind diff phase2 phase3 --checkpoint checkpoints/seed --threads 1
    smallmind diff phase1 phase2 --tiny --out /tmp/diff        # seconds
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .core import (Command, CommandError, UsageError, add_model_arguments, build_model,
                   check_presets, check_writable, register, threads_from_args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..config import presets

    p.add_argument("a", metavar="A", help=f"the phase before: one of {', '.join(presets())}")
    p.add_argument("b", metavar="B", help="the phase after (another preset)")
    p.add_argument("--prompt-len", type=int, default=16, help="fixed prompt length (16)")
    p.add_argument("--tokens", type=int, default=8,
                   help="decode steps profiled per phase, after the prefill and first token (8)")
    p.add_argument("--rows", type=int, default=20,
                   help="rows of the table, largest change of self time first (20)")
    p.add_argument("--out", default="runs/diff",
                   help="directory for <A>-vs-<B>.diff.json and .diff-flame.html (runs/diff)")
    add_model_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..study.measure.diff import check_lengths, diff_file_stem, diff_phases
    from ..study.report.diff_tables import diff_text
    from ..study.report.markdown import write_json

    check_presets([args.a, args.b])
    if args.a == args.b:
        raise UsageError(f"A and B are the same preset ({args.a!r}): a diff needs two different ones")
    check_writable(args.out, "--out", directory=True)
    stem = Path(args.out) / diff_file_stem(args.a, args.b)
    with threads_from_args(args):
        model, _, _ = build_model(args)
        try:
            check_lengths(model.config, args.prompt_len, args.tokens)
        except ValueError as exc:
            raise UsageError(f"--prompt-len / --tokens: {exc}") from exc
        try:
            diff = diff_phases(model, args.a, args.b, prompt_len=args.prompt_len,
                               tokens=args.tokens, seed=args.seed,
                               flame_graph=stem.with_name(stem.name + ".diff-flame.html"))
            if not diff.ok:
                raise CommandError(f"{diff.title}: {diff.status}: {diff.reason}")
            json_path = write_json(diff.to_dict(), stem.with_name(stem.name + ".diff.json"))
        except OSError as exc:
            raise CommandError(f"cannot write the diff to {args.out}: {exc}") from exc
    print(diff_text(diff, args.rows))
    print(f"\nfiles written:\n  {json_path}\n  {diff.flame_graph}")
    return 0


register(Command("diff", "what switching from preset A to preset B changed, op by op, read off "
                         "the profiler (table, JSON, differential flame graph)", add_arguments, run))
