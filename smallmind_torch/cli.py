"""The `smallmind` command line.

Each subcommand is one `Command`: a name, a one-line help, a function that adds its
arguments to an argparse parser, and a function that runs it and returns an exit code.
Add one with `register(Command(...))` below (imports of heavy modules go inside `run`, so
`smallmind --help` stays fast).

Exit codes: 0 ok, 1 runtime error (bad checkpoint, failed op build...), 2 usage error,
130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

DEFAULT_CHECKPOINT = "checkpoints/seed"


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


def _err(msg: str) -> None:
    print(f"smallmind: error: {msg}", file=sys.stderr)


def _set_threads(n: "int | None") -> int:
    """torch.set_num_threads(n) if n is given; returns the previous count (to restore)."""
    import torch

    old = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise UsageError("--threads must be >= 1")
        torch.set_num_threads(n)
    return old


def _check_phase(phase: str) -> None:
    from .config import PHASES

    if phase not in PHASES:
        raise UsageError(f"unknown phase {phase!r}; choose one of: {', '.join(PHASES)}")


# --------------------------------------------------------------------------- train
def _add_shape_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model shape (default: the seed shape)")
    g.add_argument("--n-layer", type=int, default=None)
    g.add_argument("--n-head", type=int, default=None)
    g.add_argument("--n-embd", type=int, default=None)
    g.add_argument("--block-size", type=int, default=None)


def _model_config_from_args(args: argparse.Namespace):
    from .config import ModelConfig

    overrides = {k: getattr(args, k) for k in ("n_layer", "n_head", "n_embd", "block_size")
                 if getattr(args, k) is not None}
    if not overrides:
        return None
    try:
        return ModelConfig(**overrides)
    except ValueError as e:
        raise UsageError(str(e)) from e


def _train_arguments(p: argparse.ArgumentParser) -> None:
    from .train import TrainConfig

    d = TrainConfig()
    p.add_argument("--steps", type=int, default=d.steps, help=f"total optimizer steps ({d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate ({d.lr})")
    p.add_argument("--min-lr", type=float, default=d.min_lr)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--eval-interval", type=int, default=d.eval_interval)
    p.add_argument("--eval-iters", type=int, default=d.eval_iters)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=d.out_dir, help=f"checkpoint directory ({d.out_dir})")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--if-missing", action="store_true",
                   help="do nothing if --out already holds a checkpoint (for `make study`)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--sample-tokens", type=int, default=200,
                   help="tokens of sample text printed at the end (0: none)")
    _add_shape_arguments(p)


def _train_run(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import CheckpointError, read_meta
    from .train import TrainConfig, train

    if args.if_missing:
        try:
            meta = read_meta(args.out)
        except CheckpointError:
            pass
        else:
            print(f"checkpoint {args.out} exists (step {meta.get('step', '?')}); not training. "
                  "Delete it or drop --if-missing to train again.")
            return 0

    try:
        cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          min_lr=args.min_lr, warmup_steps=args.warmup_steps,
                          weight_decay=args.weight_decay, eval_interval=args.eval_interval,
                          eval_iters=args.eval_iters, seed=args.seed, out_dir=args.out,
                          threads=args.threads)
    except ValueError as e:
        raise UsageError(str(e)) from e
    model_config = _model_config_from_args(args)
    try:
        result = train(cfg, model_config, resume=args.resume, progress=not args.no_progress)
    except CheckpointError as e:
        raise CommandError(str(e)) from e
    model, tok = result["model"], result["tokenizer"]
    print(f"step {result['step']} ({result['steps_run']} this run) in {result['time_s']:.1f} s, "
          f"{result['tokens_per_s']:.0f} tokens/s: train loss {result['train_loss']:.4f}, "
          f"val loss {result['val_loss']:.4f} (random: ln {model.config.vocab_size} = "
          f"{torch.log(torch.tensor(float(model.config.vocab_size))).item():.2f})")
    if result["out_dir"]:
        print(f"checkpoint: {result['out_dir']}")
    if args.sample_tokens > 0:
        prompt = "The "
        idx = torch.tensor([tok.encode(prompt)], dtype=torch.long)
        g = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            out = model.generate(idx, max_new_tokens=args.sample_tokens, temperature=0.8,
                                 top_k=None, generator=g)
        print("sample:\n" + tok.decode(out[0].tolist()))
    return 0


register(Command("train", "train the model on the default corpus (pydoc topics)",
                 _train_arguments, _train_run))


# ------------------------------------------------------------------------ generate
def _generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--phase", default="reference", help="optimization preset (see PHASES)")
    p.add_argument("--checkpoint", default=None,
                   help=f"checkpoint directory (default {DEFAULT_CHECKPOINT}; random weights "
                        f"if that does not exist)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")


def load_model_for_inference(checkpoint: "str | None", seed: int = 1337):
    """(model, tokenizer, source): from `checkpoint`, or the default one, or random weights."""
    from pathlib import Path

    from .checkpoint import CheckpointError, load_checkpoint

    path = Path(checkpoint or DEFAULT_CHECKPOINT)
    if checkpoint is None and not path.exists():
        import torch

        from .config import ModelConfig
        from .model import GPT
        from .tokenizer import Tokenizer

        print(f"smallmind: no checkpoint at {path} (train one with `smallmind train`); "
              f"using random weights and the default tokenizer", file=sys.stderr)
        torch.manual_seed(seed)
        model = GPT(ModelConfig()).eval()
        return model, Tokenizer.default(), "random"
    try:
        model, tok, _ = load_checkpoint(path)
    except CheckpointError as e:
        raise CommandError(str(e)) from e
    return model, tok, str(path)


def _generate_run(args: argparse.Namespace) -> int:
    import torch

    _check_phase(args.phase)
    if args.max_new_tokens < 0:
        raise UsageError("--max-new-tokens must be >= 0")
    if args.temperature < 0:
        raise UsageError("--temperature must be >= 0")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError("--top-k must be >= 1")
    old_threads = _set_threads(args.threads)
    try:
        return _generate(args)
    finally:
        torch.set_num_threads(old_threads)


def _generate(args: argparse.Namespace) -> int:
    import torch

    model, tok, _ = load_model_for_inference(args.checkpoint, args.seed)
    try:
        model.set_phase(args.phase)
    except Exception as e:  # e.g. the custom ops cannot be built here
        raise CommandError(f"cannot switch to phase {args.phase!r}: {e}") from e

    ids = tok.encode(args.prompt)
    if not ids:  # empty prompt: start as at a document boundary
        ids = [tok.eot_id if tok.eot_id is not None else tok.encode("\n")[0]]
    idx = torch.tensor([ids], dtype=torch.long)
    g = torch.Generator().manual_seed(args.seed)
    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    dec = tok.stream_decoder()
    with torch.no_grad():
        for token in model.generate_stream(idx, max_new_tokens=args.max_new_tokens,
                                           temperature=args.temperature, top_k=args.top_k,
                                           generator=g):
            piece = dec.feed(int(token.reshape(-1)[0]))
            if piece:
                out.write(piece)
                out.flush()
    out.write(dec.flush() + "\n")
    out.flush()
    return 0


register(Command("generate", "generate text, streamed token by token",
                 _generate_arguments, _generate_run))


# ------------------------------------------------------------- bench, profile
from .bench_cli import register_commands as _register_bench_commands  # noqa: E402

_register_bench_commands()  # `smallmind bench`, `smallmind profile` (bench_cli.py)


# ---------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smallmind", description="smallmind-torch: a small GPT made fast phase by phase")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_command=cmd)
    return parser


def main(argv: "list[str] | None" = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: usage errors (2) and --help (0)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    try:
        return int(args._command.run(args) or 0)
    except UsageError as e:
        _err(str(e))
        return 2
    except CommandError as e:
        _err(str(e))
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
