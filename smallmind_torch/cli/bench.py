"""`smallmind bench`: measure presets, the peers and the machine's limits (docs/study.md); the
peers run in this process, so that their allocations are profiled beside the presets'."""
from __future__ import annotations

import argparse

from .core import (Command, UsageError, add_model_arguments, add_settings_arguments, build_model,
                   check_presets, check_writable, register, settings_from_args, threads_from_args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..config import presets

    p.add_argument("--phases", nargs="+", default=None, metavar="PHASE",
                   help=f"presets to measure, of: {', '.join(presets())} (default: all)")
    p.add_argument("--peers", nargs="*", default=["hf"], metavar="PEER",
                   help="peer engines measured in the same run, in this process (default: hf; "
                        "none: --peers)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    p.add_argument("--no-machine", action="store_true", help="skip the machine limits")
    add_settings_arguments(p)
    add_model_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..study import print_study, run_study
    from ..study.peers.engines import PEERS
    from ..study.report.markdown import write_json

    phases = check_presets(args.phases)
    bad = [p for p in args.peers if p not in PEERS]
    if bad:
        raise UsageError(f"unknown peer(s) {', '.join(bad)}; known: {', '.join(PEERS)}")
    settings = settings_from_args(args)
    check_writable(args.json, "--json")
    with threads_from_args(args):
        model, prompt, weights = build_model(args)
        study = run_study(model, phases, args.peers, settings, machine=not args.no_machine,
                          progress=not args.no_progress, weights=weights, prompt=prompt,
                          peers_in_process=True)
        print_study(study)
    if args.json:
        print(f"results: {write_json(study.to_dict(), args.json)}")
    return 0


register(Command("bench", "measure presets, the HF peer and machine limits (docs/study.md)",
                 add_arguments, run))
