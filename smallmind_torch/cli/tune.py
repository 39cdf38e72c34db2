"""`smallmind tune`: what `max` (or `max-int8`) chose on this machine for a model shape and
thread count, the times that chose it and whether the machine was quiet then; `--force`
measures again (cached only if the machine stays quiet: tuning.py).

    smallmind tune                              # the seed shape, max
    smallmind tune --preset max-int8 --threads 2 --force
    smallmind tune --n-layer 12 --n-head 12 --n-embd 768 --vocab-size 50257 --block-size 1024
"""
from __future__ import annotations

import argparse
import os

from .core import Command, add_model_arguments, build_model, register, threads_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..config import MAX_PRESETS

    p.add_argument("--preset", choices=list(MAX_PRESETS), default="max",
                   help="the preset whose choice to show (max)")
    p.add_argument("--force", action="store_true",
                   help="measure again now, even when a choice is cached")
    add_model_arguments(p)


def entry_lines(entry: dict) -> list:
    """A cache entry as text: each candidate's median and rounds, the choice, the load."""
    rounds, kl = entry.get("rounds_ms") or {}, entry.get("over_quality_bound") or {}
    lines = [f"  {'candidate':<30} {'ms / 50 tokens':>14}  rounds (ms)"]
    for label, ms in entry.get("times_ms", {}).items():
        r = rounds.get(label)
        note = "chosen" if label == entry.get("chosen") else kl.get(label, "wrong" if ms is None else "")
        cells = ", ".join(f"{v:.1f}" for v in r) if r else "-"
        lines.append(f"  {label:<30} {'-' if ms is None else f'{ms:.1f}':>14}  {cells:<28} {note}")
    roofline = entry.get("roofline_ms")
    if roofline:
        lines.append(f"  memory roofline of the 50 tokens: {roofline:.1f} ms (every weight read once a token)")
    other = entry.get("other_cores")
    lines.append(f"  measured {entry.get('measured', '?')}, in {entry.get('attempts', 1)} attempt(s); "
                 + ("other processes' load not recorded (an entry from before it was)" if other is None
                    else f"other processes kept {other:.2f} cores busy"))
    return lines


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import ops, phases, tuning

    with threads_from_args(args):
        model, _, weights = build_model(args)
        c = model.config
        print(f"{args.preset}: {weights} weights, {c.n_layer} layers x {c.n_embd}, vocab "
              f"{c.vocab_size}, context {c.block_size}; {torch.get_num_threads()} threads, "
              f"ISA {ops.isa() if ops.available() else 'n/a (custom ops unavailable)'}")
        if os.environ.get("SMALLMIND_MAX") == "first":
            print("SMALLMIND_MAX=first: max takes its first runnable candidate, nothing is measured")
            return 0
        entry = tuning.cached_entry(model, args.preset)
        if entry is not None and not args.force:
            print(f"cached in {tuning.cache_file()}:")
            print("\n".join(entry_lines(entry)))
            return 0
        print("measuring again (--force)" if entry is not None else "nothing cached: measuring now")
        phase = phases.choose_max("cpu", torch.float32, model, args.preset, force=True)
        print(phase.description)
        entry = tuning.cached_entry(model, args.preset)
        if "not cached" in phase.description or entry is None:
            print("not cached: the next process measures again")
        else:
            print(f"cached in {tuning.cache_file()}:")
            print("\n".join(entry_lines(entry)))
    return 0


register(Command("tune", "what max / max-int8 chose on this machine, the times that chose it; "
                         "--force measures again", add_arguments, run))
