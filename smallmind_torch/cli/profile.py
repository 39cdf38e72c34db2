"""`smallmind profile`: write profiler traces of one preset (TensorBoard, Perfetto) and their offline
views (flame graph, step and memory pictures), then list the files and how to open each."""
from __future__ import annotations

import argparse

from .core import (Command, CommandError, add_model_arguments, add_phase_argument, build_model,
                   check_presets, register, threads_from_args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_phase_argument(p, "reference", "preset to profile")
    p.add_argument("--logdir", default="runs", help="TensorBoard log directory (runs)")
    p.add_argument("--step", choices=("token", "generate"), default="token",
                   help="what one profiler step is: one generated token (default) or one generate call")
    p.add_argument("--tokens", type=int, default=8, help="tokens per generate call with --step generate")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--row-limit", type=int, default=15, help="rows of the top-ops table")
    add_model_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..study import print_trace_summary, write_traces

    check_presets([args.phase])
    with threads_from_args(args):
        model, _, _ = build_model(args)
        try:
            result = write_traces(model, args.phase, args.logdir, prompt_len=args.prompt_len,
                                  seed=args.seed, step=args.step, tokens=args.tokens,
                                  row_limit=args.row_limit)
        except OSError as e:
            raise CommandError(f"cannot write traces to {args.logdir}: {e}") from e
    print_trace_summary(result)  # ends with each file written and how to open it offline
    if result.status != "ok":
        raise CommandError(f"phase {args.phase!r} is {result.status}: {result.reason}")
    return 0


register(Command("profile", "write profiler traces of one preset for TensorBoard / Perfetto",
                 add_arguments, run))
