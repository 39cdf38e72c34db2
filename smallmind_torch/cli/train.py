"""`smallmind train`: train the model on the default corpus (pydoc topics), resumably."""
from __future__ import annotations

import argparse

from .core import (Command, CommandError, UsageError, add_shape_arguments, add_threads_argument,
                   model_config_from_args, register)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..train import TrainConfig

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
    add_threads_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--sample-tokens", type=int, default=200,
                   help="tokens of sample text printed at the end (0: none)")
    add_shape_arguments(p, "model shape (default: the seed shape)",
                        ("n_layer", "n_head", "n_embd", "block_size"))


def run(args: argparse.Namespace) -> int:
    import torch

    from ..train import TrainConfig, TrainingDiverged, train
    from ..train.checkpoint import CheckpointError, read_meta

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
    model_config = model_config_from_args(args)
    try:
        result = train(cfg, model_config, resume=args.resume, progress=not args.no_progress)
    except (CheckpointError, TrainingDiverged) as e:
        raise CommandError(str(e)) from e
    except ValueError as e:  # e.g. --resume with another shape than the checkpoint's
        raise UsageError(str(e)) from e
    model, tok = result["model"], result["tokenizer"]
    print(f"step {result['step']} ({result['steps_run']} this run) in {result['time_s']:.1f} s, "
          f"{result['tokens_per_s']:.0f} tokens/s: train loss {result['train_loss']:.4f}, "
          f"val loss {result['val_loss']:.4f} (random: ln {model.config.vocab_size} = "
          f"{torch.log(torch.tensor(float(model.config.vocab_size))).item():.2f})")
    if result["out_dir"]:
        print(f"checkpoint: {result['out_dir']}")
    if args.sample_tokens > 0:
        idx = torch.tensor([tok.encode("The ")], dtype=torch.long)
        g = torch.Generator().manual_seed(args.seed)
        out = model.generate(idx, max_new_tokens=args.sample_tokens, temperature=0.8, generator=g)
        print("sample:\n" + tok.decode(out[0].tolist()))
    return 0


register(Command("train", "train the model on the default corpus (pydoc topics)", add_arguments, run))
