"""`smallmind generate`: generate text, streamed token by token."""
from __future__ import annotations

import argparse
import sys

from .core import (Command, CommandError, UsageError, add_phase_argument, add_threads_argument,
                   check_presets, checkpoint_to_use, load_checkpoint_or_fail, random_model,
                   register, threads_from_args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..train.checkpoint import DEFAULT_CHECKPOINT

    p.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    p.add_argument("--max-new-tokens", type=int, default=50)
    add_phase_argument(p, "max", "optimization preset")
    p.add_argument("--checkpoint", default=None,
                   help=f"checkpoint directory (default {DEFAULT_CHECKPOINT}; random weights "
                        f"if that does not exist)")
    p.add_argument("--random", action="store_true", help="random weights even if a checkpoint exists")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--draft", default=None, metavar="ngram|PRESET",
                   help="speculative decoding: 'ngram' (prompt lookup) or a preset whose phase "
                        "drafts with the same weights (e.g. max-int8); the output is --phase's "
                        "own; prints the acceptance stats")
    p.add_argument("--draft-k", type=int, default=4, help="tokens drafted per target call (4)")
    add_threads_argument(p)


def load_for_generation(args: argparse.Namespace) -> tuple:
    """(model, tokenizer): the checkpoint (checkpoint_to_use), else random weights and the
    shipped tokenizer."""
    from ..config import ModelConfig
    from ..train.tokenizer import Tokenizer

    checkpoint = checkpoint_to_use(args.checkpoint, random=args.random)
    if checkpoint is None:
        return random_model(ModelConfig(), args.seed), Tokenizer.default()
    model, tok, _ = load_checkpoint_or_fail(checkpoint)
    return model, tok


def run(args: argparse.Namespace) -> int:
    import torch

    from ..ops import CustomOpsUnavailable

    check_presets([args.phase])
    speculative = _speculative_config(args)
    if not args.temperature >= 0:  # NaN too
        raise UsageError(f"--temperature must be a number >= 0 (0 = greedy), got {args.temperature}")
    with threads_from_args(args):
        model, tok = load_for_generation(args)
        try:
            model.set_phase(args.phase)
        except CustomOpsUnavailable as e:
            raise CommandError(f"cannot switch to phase {args.phase!r}: {e}") from e
        if args.phase == "max":  # which candidate: it depends on this machine
            print(f"smallmind: {model.phase.description}", file=sys.stderr)
        try:
            ids = tok.encode(args.prompt)
        except ValueError as e:  # e.g. bytes that are not UTF-8 reach argv as lone surrogates
            raise UsageError(f"--prompt: {e}") from e
        if not ids:  # empty prompt: start as at a document boundary
            ids = [tok.eot_id if tok.eot_id is not None else tok.encode("\n")[0]]
        idx = torch.tensor([ids], dtype=torch.long)
        g = torch.Generator().manual_seed(args.seed)
        if speculative is not None:
            return _speculative(model, tok, idx, args, speculative, g)
        out = sys.stdout
        out.write(args.prompt)
        out.flush()
        dec = tok.stream_decoder()
        stream = model.generate_stream(idx, max_new_tokens=args.max_new_tokens,
                                       temperature=args.temperature, top_k=args.top_k, generator=g)
        try:
            for token in stream:
                piece = dec.feed(int(token.reshape(-1)[0]))
                if piece:
                    out.write(piece)
                    out.flush()
        except ValueError as e:  # e.g. a token buffer for --max-new-tokens that cannot exist
            raise CommandError(str(e)) from e
        out.write(dec.flush() + "\n")
        out.flush()
    return 0


def _speculative_config(args):
    """--draft and --draft-k as a SpeculativeConfig (None without --draft)."""
    from ..speculative import SpeculativeConfig

    if args.draft is None:
        return None
    try:
        return SpeculativeConfig(args.draft, args.draft_k)
    except ValueError as e:
        raise UsageError(f"--draft / --draft-k: {e}") from e


def _speculative(model, tok, idx, args, config, generator) -> int:
    """The whole continuation at once (verified in blocks, not streamed), then the stats."""
    from ..speculative import speculative_generate

    try:
        tokens, stats = speculative_generate(model, idx, args.max_new_tokens, config,
                                             args.temperature, args.top_k, generator)
    except ValueError as e:
        raise UsageError(f"--draft / --draft-k: {e}") from e
    print(args.prompt + tok.decode(tokens[0, idx.size(1):].tolist()))
    print(f"smallmind: speculative, draft {args.draft}, k = {args.draft_k}: {stats.describe()}",
          file=sys.stderr)
    return 0


register(Command("generate", "generate text, streamed token by token", add_arguments, run))
