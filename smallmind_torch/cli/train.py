"""`smallmind train`: train the model on the default corpus (pydoc topics), resumably.

The same command trains data-parallel under torchrun (README, "Distributed training"):
`torchrun --nproc_per_node=N -m smallmind_torch.cli train ...`. Rank 0 alone prints; the
other ranks stay silent, also about errors that every rank meets alike (a bad argument, a
set-up failure they agree on), so a job prints each message once.
"""
from __future__ import annotations

import argparse

from .core import (Command, CommandError, UsageError, add_shape_arguments, add_threads_argument,
                   model_config_from_args, register)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..config import TRAINING_SHAPES
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
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="stop after STEP as if interrupted (checkpoint written), the schedule "
                        "still spanning --steps; continue with --resume")
    p.add_argument("--if-missing", action="store_true",
                   help="do nothing if --out already holds a checkpoint (for `make study`)")
    add_threads_argument(p)
    p.add_argument("--device", default=d.device,
                   help=f"cpu or cuda ({d.device}); under torchrun each process takes "
                        "cuda:LOCAL_RANK")
    p.add_argument("--dist-timeout", type=float, default=d.dist_timeout, metavar="SECONDS",
                   help="under torchrun: how long a process waits for the others before it stops "
                        f"with an error ({d.dist_timeout:g})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--sample-tokens", type=int, default=200,
                   help="tokens of sample text printed at the end (0: none)")
    p.add_argument("--shape", choices=list(TRAINING_SHAPES), default=None,
                   help="a named shape (config.TRAINING_SHAPES; default: seed); the shape "
                        "arguments below override its fields")
    add_shape_arguments(p, "model shape (default: the seed shape)",
                        ("n_layer", "n_head", "n_embd", "block_size"))


def run(args: argparse.Namespace) -> int:
    from ..train import distributed

    try:
        rank = distributed.launch_rank()
    except ValueError as e:
        raise UsageError(str(e)) from e
    try:
        return _run(args, rank)
    except (UsageError, CommandError) as e:
        if rank == 0 or isinstance(e.__cause__, distributed.CommLost):
            raise  # printed; a lost peer is news from every rank (rank 0 may be the lost one)
        return 2 if isinstance(e, UsageError) else 1  # rank 0 prints the same message


def _run(args: argparse.Namespace, rank: int) -> int:
    import torch

    from ..train import TrainConfig, TrainingDiverged, distributed, train
    from ..train.checkpoint import CheckpointError, read_meta

    if args.if_missing:
        try:
            meta = read_meta(args.out)
        except CheckpointError:
            pass
        else:
            if rank == 0:
                print(f"checkpoint {args.out} exists (step {meta.get('step', '?')}); not training. "
                      "Delete it or drop --if-missing to train again.")
            return 0
    try:
        cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          min_lr=args.min_lr, warmup_steps=args.warmup_steps,
                          weight_decay=args.weight_decay, eval_interval=args.eval_interval,
                          eval_iters=args.eval_iters, seed=args.seed, out_dir=args.out,
                          threads=args.threads, device=args.device,
                          dist_timeout=args.dist_timeout)
    except ValueError as e:
        raise UsageError(str(e)) from e
    model_config = model_config_from_args(args, _shape_base(args.shape))
    try:
        result = train(cfg, model_config, resume=args.resume, progress=not args.no_progress,
                       stop_at=args.stop_at)
    except (CheckpointError, TrainingDiverged, distributed.PeerFailed,
            distributed.CommLost) as e:
        raise CommandError(str(e)) from e
    except ValueError as e:  # e.g. --resume with another shape, a batch that does not split
        raise UsageError(str(e)) from e
    if rank != 0:
        return 0
    model, tok = result["model"].cpu(), result["tokenizer"]  # the sample: on the CPU
    procs = f" on {result['world_size']} processes" if result["world_size"] > 1 else ""
    print(f"step {result['step']} ({result['steps_run']} this run) in {result['time_s']:.1f} s"
          f"{procs}, {result['tokens_per_s']:.0f} tokens/s: train loss {result['train_loss']:.4f}, "
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


def _shape_base(shape: "str | None") -> "dict | None":
    """The named shape's fields (None: the shape arguments alone, over the seed shape)."""
    from dataclasses import asdict

    from ..config import TRAINING_SHAPES

    return None if shape is None else asdict(TRAINING_SHAPES[shape])


register(Command("train", "train the model on the default corpus (pydoc topics)", add_arguments, run))
