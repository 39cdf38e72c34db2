"""Train the GPT on the default corpus, nanoGPT style, resumably.

AdamW with weight decay on 2-D parameters only, linear warm-up then cosine decay to
`min_lr`, gradient clipping, a validation estimate every `eval_interval` steps, and a
checkpoint (see `train/checkpoint.py`) at each evaluation and at the end. `resume=True` restores
the model, the optimizer state, the step and the batch RNG, so a run cut in two gives the
same weights as one uninterrupted run.

Under `torchrun --nproc_per_node=N` (see `train/distributed.py`) the same loop trains with
DistributedDataParallel: every rank draws the same global batch of `batch_size` windows from
the shared batch RNG and trains on its 1/N of the rows, DDP averages the gradients, so N
processes take the steps one process would (up to float rounding). Rank 0 alone writes the
checkpoints, the log lines and the progress bar. Nothing in a checkpoint depends on N, so a
run resumes under any number of processes, on the same schedule and the same global batches.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import ModelConfig
from ..model import GPT
from ..paths import probe_directory
from ..threads import threads
from . import distributed
from .checkpoint import (DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint,
                         load_train_state, save_checkpoint, check_target)
from .corpus import default_tokens, get_batch, train_val_split
from .tokenizer import Tokenizer


@dataclass(frozen=True)
class TrainConfig:
    # Defaults: a few minutes on 2 CPU cores at the seed shape (results/REPORT.md has the run)
    steps: int = 600                # total optimizer steps (a resumed run continues up to this)
    batch_size: int = 8
    lr: float = 2e-3                # peak learning rate, reached after warm-up
    min_lr: float = 2e-4            # cosine decay floor, reached at `steps`
    warmup_steps: int = 50
    weight_decay: float = 0.1       # applied to 2-D parameters only (matmul weights, embeddings)
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0          # max global grad norm; 0 disables clipping
    eval_interval: int = 100        # validation estimate + checkpoint every this many steps
    eval_iters: int = 10            # batches per loss estimate
    val_fraction: float = 0.1       # last 10 % of the corpus tokens are the validation set
    seed: int = 1337
    out_dir: str = DEFAULT_CHECKPOINT
    save: bool = True               # write checkpoints to out_dir
    threads: "int | None" = None    # torch.set_num_threads for the run; None = torch's default
    device: str = "cpu"             # "cpu" or "cuda" (under torchrun: cuda:LOCAL_RANK per process)
    dist_timeout: float = distributed.DEFAULT_TIMEOUT_S  # s a rank waits for its peers (torchrun)

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_interval", "eval_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1")
        for name, low in (("lr", 0.0), ("min_lr", 0.0), ("weight_decay", 0.0), ("grad_clip", 0.0)):
            value = getattr(self, name)
            if not math.isfinite(value) or value < low or (name == "lr" and value == 0):
                raise ValueError(f"TrainConfig.{name} must be a finite number "
                                 f"{'> 0' if name == 'lr' else '>= 0'}, got {value!r}")
        if not math.isfinite(self.dist_timeout) or self.dist_timeout <= 0:
            raise ValueError(f"TrainConfig.dist_timeout must be a finite number > 0, "
                             f"got {self.dist_timeout!r}")
        if self.warmup_steps < 0:
            raise ValueError("TrainConfig.warmup_steps must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise ValueError("TrainConfig.threads must be >= 1 or None")


class TrainingDiverged(RuntimeError):
    """The loss became non-finite: training stops and the last good checkpoint is kept."""


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then cosine decay."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.steps:
        return cfg.min_lr
    span = max(1, cfg.steps - cfg.warmup_steps)
    ratio = (step - cfg.warmup_steps) / span
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on parameters with >= 2 dims only (no biases, no LayerNorm)."""
    params = [p for p in model.parameters() if p.requires_grad]   # tied weights appear once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, splits: dict, cfg: TrainConfig, block_size: int,
                  ctx: "distributed.DistContext | None" = None) -> dict:
    """Mean loss over `eval_iters` batches per split, always the same batches (own RNG).

    With a DDP `ctx`, each rank evaluates its rows of every batch and the means are averaged
    over the ranks: the same figure on every rank (they all decide on it), at 1/N the work."""
    ctx = ctx or distributed.DistContext(device=torch.device(cfg.device))
    rows = ctx.rows(cfg.batch_size)
    was_training = model.training
    model.eval()
    out = {}
    for name, data in splits.items():
        g = torch.Generator().manual_seed(cfg.seed + 1)
        losses = [lm_loss(model, *get_batch(data, cfg.batch_size, block_size, g, ctx.device,
                                            rows)).item()
                  for _ in range(cfg.eval_iters)]
        out[name] = sum(losses) / len(losses)
    model.train(was_training)
    if ctx.ddp:
        means = distributed.all_mean(torch.tensor(list(out.values()), dtype=torch.float64), ctx)
        out = dict(zip(out, means.tolist()))
    return out


def train(train_config: TrainConfig = TrainConfig(), model_config: "ModelConfig | None" = None,
          resume: bool = False, progress: bool = True, tokenizer: "Tokenizer | None" = None,
          data: "torch.Tensor | None" = None, stop_at: "int | None" = None) -> dict:
    """Train (or resume) and return a summary.

    Returns a dict: `train_loss`, `val_loss` (final estimates), `step` (steps done in all),
    `steps_run` (in this call), `time_s`, `tokens_per_s`, `history` (list of
    {step, train_loss, val_loss, lr}), `out_dir`, plus `model` and `tokenizer`.
    `model_config` defaults to the seed shape (or, on resume, the checkpoint's);
    `tokenizer` to `Tokenizer.default()` (or the checkpoint's); `data` to the default corpus.
    `stop_at` stops (evaluating and checkpointing) after that step as if interrupted, the
    schedule still spanning `train_config.steps`: train in chunks, resuming each time.

    Launched by torchrun, it joins the process group (gloo on CPU, nccl on CUDA), trains
    with DDP on this rank's share of each global batch of `batch_size` (which must split
    evenly: ValueError otherwise, before any rendezvous) and leaves the group at the end;
    the summary is the same on every rank, `world_size` and `rank` say where it ran.
    """
    distributed.check_batch_split(train_config.batch_size, distributed.world_size())
    with threads(train_config.threads), \
            distributed.process_group(train_config.device, train_config.dist_timeout) as ctx, \
            distributed.comm_errors(ctx):  # a lost peer: one line, not gloo's traceback
        return _train(train_config, model_config, resume, progress, tokenizer, data, stop_at, ctx)


def _train(cfg, model_config, resume, progress, tokenizer, data, stop_at, ctx) -> dict:
    out_dir = Path(cfg.out_dir)
    device = ctx.device
    state = None
    # Every rank builds the same model and state from the same seed or checkpoint (so the
    # checkpoint must be readable on every node). A rank that fails here fails them all.
    with distributed.together(ctx):
        if resume:
            model, ckpt_tok, meta = load_checkpoint(out_dir, map_location=device)
            if model_config is not None and model_config != model.config:
                raise ValueError(f"resume: checkpoint in {out_dir} has {model.config}, "
                                 f"not the requested {model_config}")
            tokenizer = tokenizer or ckpt_tok
            state = load_train_state(out_dir)
            model_config = model.config
        else:
            model_config = model_config or ModelConfig()
            tokenizer = tokenizer or Tokenizer.default()
            torch.manual_seed(cfg.seed)
            model = GPT(model_config)
        if cfg.save and ctx.is_main:
            check_target(out_dir)  # never a directory of someone else's files
            _check_writable(out_dir)
        if tokenizer.vocab_size > model_config.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's "
                             f"vocab_size is {model_config.vocab_size}")
        model.to(device)
        if hasattr(model, "set_phase"):
            model.set_phase("reference")
        model.train()

        if data is None:
            data = default_tokens(tokenizer)
        train_data, val_data = train_val_split(data, cfg.val_fraction)
        block = model_config.block_size
        for name, d in (("train", train_data), ("val", val_data)):
            if len(d) < block + 1:
                raise ValueError(f"{name} split has {len(d)} tokens, fewer than block_size + 1")
        splits = {"train": train_data, "val": val_data}

        optimizer = make_optimizer(model, cfg)
        # The batch RNG is the same on every rank: each draws the whole global batch from it
        # and keeps its rows, so the batches do not depend on the number of processes.
        batch_gen = torch.Generator().manual_seed(cfg.seed)
        start = 0
        history: list = []
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            batch_gen.set_state(state["batch_rng"])
            torch.set_rng_state(state["torch_rng"])
            start = int(state["step"])
            history = list(state.get("history", []))
    rows = ctx.rows(cfg.batch_size)
    raw_model = model  # what is saved, evaluated and returned; `model` is what trains

    def checkpoint(step: int, losses: dict) -> None:
        if not cfg.save:
            return
        with distributed.together(ctx):  # a failed save on rank 0 stops every rank
            if ctx.is_main:
                save_checkpoint(
                    out_dir, raw_model, tokenizer, optimizer, step=step,
                    extra={"train_config": asdict(cfg), "train_loss": losses.get("train"),
                           "val_loss": losses.get("val"), "world_size": ctx.world_size},
                    train_state={"batch_rng": batch_gen.get_state(),
                                 "torch_rng": torch.get_rng_state(), "history": history},
                )

    if ctx.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # Copies rank 0's parameters to every rank, then averages the gradients in backward.
        model = DDP(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    bar = None
    if progress and ctx.is_main:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, initial=min(start, cfg.steps), desc="train",
                   unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    step = start
    losses: dict = {}
    loss_ema = None
    end = cfg.steps if stop_at is None else max(start, min(stop_at, cfg.steps))
    while step < end:
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(train_data, cfg.batch_size, block, batch_gen, ctx.device, rows)
        loss = lm_loss(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP: the gradients are averaged over the ranks here
        if cfg.grad_clip > 0:  # the same averaged gradients, so the same norm on every rank
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        # The global batch's loss, the same on every rank: what the log shows, and what
        # every rank checks, so all of them stop together on a non-finite one
        loss_val = distributed.all_mean(loss.detach(), ctx).item()
        if not math.isfinite(loss_val):
            raise TrainingDiverged(
                f"training stopped at step {step}: the loss is {loss_val} (learning rate "
                f"{lr:g}); nothing was saved after the last good checkpoint"
                + (f" in {out_dir}" if cfg.save else ""))
        loss_ema = loss_val if loss_ema is None else 0.9 * loss_ema + 0.1 * loss_val
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.3f}", lr=f"{lr:.1e}", refresh=False)
        if step % cfg.eval_interval == 0 or step == end:
            losses = estimate_loss(raw_model, splits, cfg, block, ctx)
            if not all(math.isfinite(v) for v in losses.values()):
                raise TrainingDiverged(
                    f"training stopped at step {step}: the evaluated loss is {losses}; "
                    "nothing was saved after the last good checkpoint")
            history.append({"step": step, "train_loss": losses["train"],
                            "val_loss": losses["val"], "lr": lr})
            msg = f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
            if bar is not None:
                bar.write(msg)
            checkpoint(step, losses)
    elapsed = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    if not losses:  # nothing left to run (resumed at or past `steps`)
        losses = estimate_loss(raw_model, splits, cfg, block, ctx)
    steps_run = step - start
    raw_model.eval()
    return {
        "train_loss": losses["train"], "val_loss": losses["val"],
        "step": step, "steps_run": steps_run, "time_s": elapsed,
        # the global batch: the whole group's throughput
        "tokens_per_s": steps_run * cfg.batch_size * block / elapsed if elapsed > 0 else 0.0,
        "history": history, "out_dir": str(out_dir) if cfg.save else None,
        "model": raw_model, "tokenizer": tokenizer,
        "world_size": ctx.world_size, "rank": ctx.rank,
    }


def _check_writable(out_dir: Path) -> None:
    """Fail before training, not after, when the checkpoint directory cannot be written."""
    try:
        probe_directory(out_dir)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoints to {out_dir}: {exc}") from exc


__all__ = ["TrainConfig", "TrainingDiverged", "train", "lr_at", "make_optimizer", "estimate_loss", "lm_loss"]
