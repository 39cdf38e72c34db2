"""What every `smallmind` command shares: the command registry, the two error types, the
common arguments (model shape, threads, checkpoint, presets) and model loading.

Each command is one `Command` (a name, a one-line help, a function that adds its arguments to
an argparse parser, and a function that runs it and returns an exit code), defined in its own
module of this package and registered with `register`. Heavy modules are imported inside the
run functions, so `smallmind --help` stays fast. This module imports no command module.

Exit codes: 0 ok, 1 runtime error (bad checkpoint, failed op build...), 2 usage error,
130 interrupted.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from typing import Callable

SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "vocab_size", "block_size")
TINY_SHAPE = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=64, block_size=32)
PROMPT_TEXT = "The quick brown fox jumps over the lazy dog. "  # benchmark prompt with a checkpoint


class UsageError(Exception):
    """A bad argument found after parsing: reported without a traceback, exit code 2."""


class CommandError(Exception):
    """A runtime failure worth a one-line message: reported without a traceback, exit code 1."""


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def register(cmd: Command) -> Command:
    if cmd.name in COMMANDS:
        raise ValueError(f"command {cmd.name!r} is already registered")
    COMMANDS[cmd.name] = cmd
    return cmd


def error(msg: str) -> None:
    print(f"smallmind: error: {msg}", file=sys.stderr)


def run_command(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """`run(args)` after check_numbers, its errors as one line and an exit code (the command
    line's and the experiment scripts' one way): 2 usage, 1 runtime error, 130 interrupted."""
    try:
        check_numbers(args)
        return int(run(args) or 0)
    except UsageError as e:
        error(str(e))
        return 2
    except CommandError as e:
        error(str(e))
        return 1
    except (MemoryError, RuntimeError) as e:  # an allocation the machine cannot hold
        text = str(e) or type(e).__name__
        if not isinstance(e, MemoryError) and not _OUT_OF_MEMORY.search(text):
            raise
        error(f"out of memory: {text.splitlines()[0][:200]}; ask for a smaller model, batch or "
              "token count")
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


# torch's allocators' words for an allocation that failed (CPU and CUDA)
_OUT_OF_MEMORY = re.compile(r"can't allocate memory|out of memory|CUDA out of memory", re.I)


# ---- shared arguments --------------------------------------------------------------------

def add_shape_arguments(p: argparse.ArgumentParser, title: str, fields=SHAPE_FIELDS) -> None:
    g = p.add_argument_group(title)
    for name in fields:
        g.add_argument("--" + name.replace("_", "-"), type=int, default=None)


def model_config_from_args(args: argparse.Namespace, base: "dict | None" = None):
    """A ModelConfig from the shape arguments over `base` (None if neither sets anything)."""
    from ..config import ModelConfig

    shape = dict(base or {})
    shape.update({k: getattr(args, k) for k in SHAPE_FIELDS if getattr(args, k, None) is not None})
    if not shape:
        return None
    try:
        return ModelConfig(**shape)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the run")


def threads_from_args(args: argparse.Namespace):
    """The `with` block that runs a command with --threads threads (checked by check_numbers)."""
    from ..threads import threads

    return threads(args.threads)


# Every int argument of every command, by its argparse dest: (lowest, highest, why the highest).
# Checked once, before a command runs (check_numbers), so that a value out of range is one
# line, never a traceback, a crash or an allocation nobody meant.
_LARGEST_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit seed
INT_BOUNDS = {
    "seed": (0, _LARGEST_SEED, ""),
    "n_layer": (1, 1024, ""), "n_head": (1, 4096, ""), "n_embd": (1, 65536, ""),
    "vocab_size": (1, 2**20, ""),
    "block_size": (1, 16384, " (the causal mask is block_size^2 bytes)"),
    "new_tokens": (1, 100_000, ""), "runs": (1, 10_000, ""), "prompt_len": (1, 16384, ""),
    "long_prompt": (0, 16384, ""), "max_new_tokens": (0, 1_000_000, ""), "top_k": (1, 2**20, ""),
    "tokens": (1, 100_000, ""), "row_limit": (1, 10_000, ""), "sample_tokens": (0, 100_000, ""),
    "rows": (1, 10_000, ""), "draft_k": (1, 1024, ""),
    "steps": (1, 10**9, ""), "batch_size": (1, 65536, ""), "warmup_steps": (0, 10**9, ""),
    "eval_interval": (1, 10**9, ""), "eval_iters": (1, 10**6, ""), "stop_at": (1, 10**9, ""),
}


def check_numbers(args: argparse.Namespace) -> None:
    """Raise UsageError for the first int argument (INT_BOUNDS, and --threads up to
    threads.MAX_THREADS) outside its range; an argument given several values is checked
    value by value."""
    from ..threads import MAX_THREADS

    bounds = {**INT_BOUNDS, "threads": (1, MAX_THREADS, " (4 x this machine's CPUs)")}
    for dest, (lo, hi, why) in bounds.items():
        value = getattr(args, dest, None)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and not lo <= v <= hi:
                option = "--" + dest.replace("_", "-")
                raise UsageError(f"{option} must be >= {lo}, got {v}" if v < lo else
                                 f"{option} must be <= {hi}{why}, got {v}")


def check_writable(path: "str | None", option: str, directory: bool = False) -> None:
    """Raise UsageError unless `path` (a file, or with `directory` a directory) can be written,
    before a run whose results it is to hold, not after; None: nothing to check."""
    from pathlib import Path

    from ..paths import probe_directory

    if path is None:
        return
    target = Path(path)
    try:
        if not directory and target.is_dir():
            raise IsADirectoryError(f"{target} is a directory")
        probe_directory(target if directory else target.parent)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write there ({exc})") from exc


def check_presets(names) -> list:
    """Preset names (config.presets()) from the command line; none given = all."""
    from ..config import presets

    if not names:
        return list(presets())
    unknown = [p for p in names if p not in presets()]
    if unknown:
        raise UsageError(f"unknown phase{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(repr(p) for p in unknown)}; choose from: {', '.join(presets())}")
    return list(names)


# ---- models ------------------------------------------------------------------------------

def load_checkpoint_or_fail(path):
    """(model, tokenizer, meta) from a checkpoint directory; a bad one is a CommandError."""
    from ..train.checkpoint import CheckpointError, load_checkpoint

    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        raise CommandError(str(exc)) from exc


def add_phase_argument(p: argparse.ArgumentParser, default: str, what: str) -> None:
    from ..config import presets

    p.add_argument("--phase", default=default, metavar="PHASE",
                   help=f"{what}: one of {', '.join(presets())} (default {default}; docs/study.md)")


def checkpoint_to_use(checkpoint: "str | None", *, random: bool = False, reason: str = ""):
    """The checkpoint a command loads: --checkpoint when given; else the default checkpoint
    (checkpoints/seed, what `smallmind train` writes) when it exists and nothing asks for
    random weights (`reason` says what does: --random, --tiny, a shape); else None. Says on
    stderr which weights it is, since the figures depend on them."""
    from pathlib import Path

    from ..train.checkpoint import DEFAULT_CHECKPOINT

    if checkpoint:
        return Path(checkpoint)
    path = Path(DEFAULT_CHECKPOINT)
    if not random and path.exists():
        print(f"smallmind: weights: the checkpoint in {path} (--random for random weights)",
              file=sys.stderr)
        return path
    why = reason or (f"no checkpoint in {path} (`smallmind train` makes one)" if not path.exists()
                     else "--random")
    print(f"smallmind: weights: random ({why})", file=sys.stderr)
    return None


def random_model(config, seed: int):
    """A GPT with random weights drawn under `seed`, in eval mode."""
    import torch

    from ..model import GPT

    torch.manual_seed(seed)
    return GPT(config).eval()


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--checkpoint / --random / --seed / --tiny / the shape: the model a study command measures."""
    from ..train.checkpoint import DEFAULT_CHECKPOINT

    p.add_argument("--checkpoint", default=None,
                   help=f"checkpoint directory (default: {DEFAULT_CHECKPOINT} when it exists, "
                        "else random weights)")
    p.add_argument("--random", action="store_true", help="random weights even if a checkpoint exists")
    p.add_argument("--seed", type=int, default=1234, help="seed of the random weights and the prompt")
    p.add_argument("--tiny", action="store_true",
                   help="tiny shape and few tokens (seconds; for tests and smoke runs)")
    add_threads_argument(p)
    add_shape_arguments(p, "model shape for random weights (default: the seed shape)")


def build_model(args: argparse.Namespace) -> tuple:
    """(model, prompt or None, weights description) from add_model_arguments' arguments:
    the checkpoint (with a prompt encoded from PROMPT_TEXT) or random weights."""
    import torch

    from ..config import ModelConfig

    shape_given = any(getattr(args, k, None) is not None for k in SHAPE_FIELDS)
    reason = "--tiny" if args.tiny else ("a model shape was given" if shape_given else "")
    checkpoint = checkpoint_to_use(args.checkpoint, random=args.random or bool(reason), reason=reason)
    if checkpoint is not None:
        model, tok, _ = load_checkpoint_or_fail(checkpoint)
        ids = tok.encode(PROMPT_TEXT)[:getattr(args, "prompt_len", None) or (4 if args.tiny else 16)]
        return model.eval(), torch.tensor([ids], dtype=torch.long), f"checkpoint {checkpoint}"
    config = model_config_from_args(args, TINY_SHAPE if args.tiny else None) or ModelConfig()
    return random_model(config, args.seed), None, f"random (seed {args.seed})"


def add_settings_arguments(p: argparse.ArgumentParser) -> None:
    """The protocol's knobs (study BenchSettings) that the command line exposes."""
    p.add_argument("--new-tokens", type=int, default=None, help="tokens per generation (50)")
    p.add_argument("--runs", type=int, default=None, help="timed runs after one warm-up (3)")
    p.add_argument("--prompt-len", type=int, default=None, help="fixed prompt length (16)")
    p.add_argument("--no-profile", action="store_true", help="skip memory/time-split profiling")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def settings_from_args(args: argparse.Namespace):
    from ..study import BenchSettings

    over = {k: getattr(args, k) for k in ("new_tokens", "runs", "prompt_len")
            if getattr(args, k, None) is not None}
    if getattr(args, "no_profile", False):
        over["profile"] = False
    try:
        return BenchSettings.tiny(**over) if args.tiny else BenchSettings(**over)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
