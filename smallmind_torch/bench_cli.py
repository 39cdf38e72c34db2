"""`smallmind bench` and `smallmind profile`: the CLI glue over harness.py and traces.py.

Each command is an `add_arguments(parser)` / `run(args) -> exit code` pair (`bench_arguments`,
`bench_run`, `profile_arguments`, `profile_run`), registered in cli.py. The experiment scripts
reuse `build_model` and `add_common_arguments`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TINY_SHAPE = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=64, block_size=32)
PROMPT_TEXT = "The quick brown fox jumps over the lazy dog. "


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint directory (smallmind train); default: random weights, fixed seed")
    p.add_argument("--seed", type=int, default=1234, help="seed of the random weights and the prompt")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--tiny", action="store_true",
                   help="tiny shape and few tokens (seconds; for tests and smoke runs)")
    g = p.add_argument_group("model shape for random weights (default: the seed shape)")
    for name in ("n_layer", "n_head", "n_embd", "vocab_size", "block_size"):
        g.add_argument("--" + name.replace("_", "-"), type=int, default=None)


def add_settings_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--new-tokens", type=int, default=None, help="tokens per generation (50)")
    p.add_argument("--runs", type=int, default=None, help="timed runs after one warm-up (3)")
    p.add_argument("--prompt-len", type=int, default=None, help="fixed prompt length (16)")
    p.add_argument("--no-profile", action="store_true", help="skip memory/time-split profiling")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def settings_from_args(args):
    from .harness import BenchSettings

    over = {k: getattr(args, k) for k in ("new_tokens", "runs", "prompt_len")
            if getattr(args, k, None) is not None}
    if getattr(args, "no_profile", False):
        over["profile"] = False
    try:
        return BenchSettings.tiny(**over) if args.tiny else BenchSettings(**over)
    except ValueError as exc:
        raise _usage(str(exc)) from exc


def _usage(msg):
    try:
        from .cli import UsageError

        return UsageError(msg)
    except ImportError:  # pragma: no cover
        return SystemExit(f"error: {msg}")


def _command_error(msg):
    try:
        from .cli import CommandError

        return CommandError(msg)
    except ImportError:  # pragma: no cover
        return SystemExit(f"error: {msg}")


def build_model(args) -> tuple:
    """(model, prompt or None, weights description) from --checkpoint or random weights."""
    import torch

    from .config import ModelConfig
    from .model import GPT

    if args.checkpoint:
        try:
            from .checkpoint import load_checkpoint
        except ImportError as exc:
            raise _command_error(f"--checkpoint needs smallmind_torch.checkpoint: {exc}") from exc
        try:
            model, tok, _ = load_checkpoint(args.checkpoint)
        except Exception as exc:
            raise _command_error(f"cannot load checkpoint {args.checkpoint}: {exc}") from exc
        prompt = None
        try:
            ids = tok.encode(PROMPT_TEXT)
            if ids:
                plen = args.prompt_len or (4 if args.tiny else 16)
                prompt = torch.tensor([ids[:plen]], dtype=torch.long)
        except Exception:
            prompt = None
        return model.eval(), prompt, f"checkpoint {args.checkpoint}"
    shape = dict(TINY_SHAPE) if args.tiny else {}
    shape.update({k: getattr(args, k) for k in ("n_layer", "n_head", "n_embd", "vocab_size", "block_size")
                  if getattr(args, k, None) is not None})
    try:
        config = ModelConfig(**shape)
    except ValueError as exc:
        raise _usage(str(exc)) from exc
    torch.manual_seed(args.seed)
    return GPT(config).eval(), None, f"random (seed {args.seed})"


class _threads:
    def __init__(self, n):
        self.n = n

    def __enter__(self):
        import torch

        self.old = torch.get_num_threads()
        if self.n is not None:
            if self.n < 1:
                raise _usage("--threads must be >= 1")
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.old)


def check_phases(phases) -> list:
    from .config import PHASES

    if not phases:
        return list(PHASES)
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise _usage(f"unknown phase(s) {', '.join(unknown)}; choose from: {', '.join(PHASES)}")
    return list(phases)


def print_study(study, out=None) -> None:
    from .report import format_split_table, format_table

    out = out or sys.stdout
    c = study.model_config
    print(f"\nmodel: {c['n_layer']} layers, {c['n_head']} heads, n_embd {c['n_embd']}, vocab "
          f"{c['vocab_size']}, block {c['block_size']} ({study.num_parameters / 1e6:.2f} M params, "
          f"{study.weights}); {study.settings['new_tokens']} new tokens, {study.settings['runs']} runs",
          file=out)
    print(format_table(study), file=out)
    if any(r.ok and r.time_split for r in study.phases.values()):
        print("\ntime split (% of profiled generation time):", file=out)
        print(format_split_table(study), file=out)
    m = study.machine
    if m:
        print(f"\nmachine: read bandwidth {m.bandwidth_weights_gbs:.1f} GB/s (weights-sized "
              f"{m.weight_bytes / 1e6:.2f} MB buffer), {m.bandwidth_large_gbs:.1f} GB/s "
              f"({m.large_bytes / 2**20:.0f} MiB buffer); torch.mm peak {m.mm_peak_gflops:.1f} GFLOPS; "
              f"ideal decode step {m.ideal_decode_ms:.3f} ms", file=out)
        for name, r in study.phases.items():
            if r.ok and r.roofline.get("decode_fraction_of_roofline") is not None:
                gemm = {k.split("_")[1]: v for k, v in r.roofline.items() if k.startswith("gemm_")}
                gtxt = ", ".join(f"GEMM{n} {100 * v:.0f}% of torch.mm" for n, v in gemm.items())
                print(f"  {name:10s} decode {r.decode_ms:.3f} ms = "
                      f"{100 * r.roofline['decode_fraction_of_roofline']:.1f}% of roofline; {gtxt}", file=out)
    e = study.env
    print(f"\nenvironment: torch {e['torch']}, {e['threads']} threads, {e['cpu']} "
          f"({e.get('cpu_capability', '?')}), device {e['device']}", file=out)


# ------------------------------------------------------------------------------- bench
def bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--phases", nargs="+", default=None, metavar="PHASE",
                   help="presets to measure (default: all of PHASES)")
    p.add_argument("--peers", nargs="*", default=["hf"], metavar="PEER",
                   help="peers measured in the same run (default: hf; none: --peers)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    p.add_argument("--no-machine", action="store_true", help="skip the machine limits")
    add_settings_arguments(p)
    add_common_arguments(p)


def bench_run(args) -> int:
    from .harness import PEERS, run_study

    phases = check_phases(args.phases)
    bad = [p for p in args.peers if p not in PEERS]
    if bad:
        raise _usage(f"unknown peer(s) {', '.join(bad)}; known: {', '.join(PEERS)}")
    settings = settings_from_args(args)
    with _threads(args.threads):
        model, prompt, weights = build_model(args)
        study = run_study(model, phases, args.peers, settings, machine=not args.no_machine,
                          progress=not args.no_progress, weights=weights, prompt=prompt)
        print_study(study)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(study.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
        print(f"results: {path}")
    return 0


# ----------------------------------------------------------------------------- profile
def profile_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--phase", default="reference", help="preset to profile (see PHASES)")
    p.add_argument("--logdir", default="runs", help="TensorBoard log directory (runs)")
    p.add_argument("--step", choices=("token", "generate"), default="token",
                   help="what one profiler step is: one generated token (default) or one generate call")
    p.add_argument("--tokens", type=int, default=8, help="tokens per generate call with --step generate")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--row-limit", type=int, default=15, help="rows of the top-ops table")
    add_common_arguments(p)


def profile_run(args) -> int:
    from .traces import print_trace_summary, write_traces

    check_phases([args.phase])
    with _threads(args.threads):
        model, _, _ = build_model(args)
        result = write_traces(model, args.phase, args.logdir, prompt_len=args.prompt_len,
                              seed=args.seed, step=args.step, tokens=args.tokens,
                              row_limit=args.row_limit)
    print_trace_summary(result)
    if result.status != "ok":
        raise _command_error(f"phase {args.phase!r} is {result.status}: {result.reason}")
    print(f"view: tensorboard --logdir {args.logdir}   (PYTORCH_PROFILER tab, run {args.phase!r})")
    return 0


def register_commands() -> None:
    """Add `bench` and `profile` to cli.COMMANDS (idempotent)."""
    from . import cli

    for name, help_, add, run in (
            ("bench", "measure presets, the HF peer and machine limits (STUDY.md protocol)",
             bench_arguments, bench_run),
            ("profile", "write profiler traces of one preset for TensorBoard / Perfetto",
             profile_arguments, profile_run)):
        if name not in cli.COMMANDS:
            cli.register(cli.Command(name, help_, add, run))
