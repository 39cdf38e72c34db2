"""Data-parallel training under torchrun: the process group, and failing together.

nanoGPT's recipe: `torchrun` starts one process per device and sets RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT; each process joins the group with
`init_process_group` (gloo on CPU, nccl on CUDA), wraps the model in
DistributedDataParallel, which averages the gradients during backward, and leaves the group
at the end. Nothing here communicates by itself: every byte goes through torch.distributed.

    process_group()   the group for a run (none when not launched by torchrun) and its ranks
    world_size()      how many processes train together (1 without torchrun)
    together()        a block that, if it fails on one rank, fails on every rank
    comm_errors()     a lost peer or a timeout in a collective as one CommLost error
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist

# How long a rank waits in a collective for the others. Long enough for rank 0 to write a
# checkpoint while the others wait at the next gradient all-reduce; short enough that a peer
# that hung (rather than died: torchrun stops the others then) does not hold the job for long.
DEFAULT_TIMEOUT_S = 300.0


class PeerFailed(RuntimeError):
    """Another rank failed inside a `together()` block (its message is in this one)."""


class CommLost(RuntimeError):
    """A collective failed: a peer died, or hung longer than the timeout."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size, device; `ddp` when a group is active."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    ddp: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and the progress bar."""
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch of `batch_size` (which the world size divides)."""
        per_rank = batch_size // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)


def _env_int(name: str) -> int:
    if name not in os.environ:
        raise ValueError(f"the environment variable {name} is not set (torchrun sets RANK, "
                         "LOCAL_RANK and WORLD_SIZE: start the processes with torchrun)")
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"the environment variable {name}={value!r} (set by torchrun) is not "
                         "an integer") from None


def launched() -> bool:
    """True in a process that torchrun started (it sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_size() -> int:
    """Processes training together: the active group's, else torchrun's WORLD_SIZE, else 1.
    Known before the group is joined, so bad arguments fail before any rendezvous."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _env_int("WORLD_SIZE") if launched() else 1


def launch_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK") if launched() else 0


def check_batch_split(batch_size: int, world: int) -> None:
    """The global batch is split evenly over the ranks, or the run does not start: an uneven
    split would weight the ranks' rows unequally in DDP's gradient average."""
    if batch_size % world:
        low = batch_size // world * world
        hint = f"{low} or {low + world}" if low else f"{world}"
        raise ValueError(f"batch_size {batch_size} does not split evenly over {world} processes "
                         f"(the global batch is divided among them): use a multiple of {world}, "
                         f"e.g. {hint}")


def _device(name: "str | torch.device", local_rank: "int | None") -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {name!r}: training runs on 'cpu' or 'cuda'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available to this torch "
                             f"({torch.__version__})")
        if local_rank is not None:  # one GPU per process, as torchrun numbers them per node
            if local_rank >= torch.cuda.device_count():
                raise ValueError(f"LOCAL_RANK {local_rank} but this node has "
                                 f"{torch.cuda.device_count()} GPU(s): start at most that many "
                                 "processes per node")
            device = torch.device("cuda", local_rank)
    elif device.type != "cpu":
        raise ValueError(f"device {name!r}: training runs on 'cpu' or 'cuda'")
    return device


@contextlib.contextmanager
def process_group(device: "str | torch.device" = "cpu",
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[DistContext]:
    """The ranks of a run, in a group joined here and destroyed on the way out.

    Not launched by torchrun: one process, no group. Launched: join with nccl for a CUDA
    device (each process on cuda:LOCAL_RANK), gloo otherwise. A group the caller already
    joined is used as it is and left to the caller."""
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        local = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0
        yield DistContext(rank, local, dist.get_world_size(), _device(device, local), True,
                          timeout_s)
        return
    if not launched():
        yield DistContext(device=_device(device, None), timeout_s=timeout_s)
        return
    if not dist.is_available():
        raise ValueError("launched by torchrun, but this torch was built without "
                         "torch.distributed")
    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    dev = _device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    # env:// rendezvous: MASTER_ADDR / MASTER_PORT from torchrun. The timeout bounds every
    # collective, so a rank whose peer hung stops with an error instead of waiting forever.
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                            timeout=timedelta(seconds=timeout_s),
                            device_id=dev if dev.type == "cuda" else None)
    try:
        yield DistContext(rank, local, world, dev, True, timeout_s)
    finally:
        dist.destroy_process_group()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^\[[^\]]*\]\s*", "", text)  # gloo's "[.../pair.cc:537] " source prefix


@contextlib.contextmanager
def together(ctx: DistContext) -> Iterator[None]:
    """Run a block on every rank; if it raises on any rank, it raises on every rank.

    For the steps where ranks can disagree (rank 0 alone checks and writes the checkpoint
    directory; each rank reads the checkpoint): without this, a rank that failed alone
    would leave the others waiting at the next collective. A failed rank re-raises its own
    error; the others raise PeerFailed with the first failed rank's message. The block must
    not itself communicate."""
    if not ctx.ddp:
        yield
        return
    error = None
    try:
        yield
    except Exception as exc:  # BaseException (Ctrl-C) ends the process; torchrun stops the rest
        error = exc
    messages: list = [None] * ctx.world_size
    with comm_errors(ctx):
        dist.all_gather_object(messages, None if error is None else _one_line(error))
    if error is not None:
        raise error
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if failed:
        r, message = failed[0]
        raise PeerFailed(f"rank {r} failed: {message}")


def _is_comm_error(exc: BaseException) -> bool:
    # gloo reports a lost peer or a timeout as a plain RuntimeError from its sources
    text = str(exc)
    return isinstance(exc, dist.DistError) or "gloo" in text or "NCCL" in text


@contextlib.contextmanager
def comm_errors(ctx: DistContext) -> Iterator[None]:
    """A failed collective (a peer died, or hung past the timeout) as one CommLost line."""
    try:
        yield
    except RuntimeError as exc:
        if not ctx.ddp or isinstance(exc, (PeerFailed, CommLost)) or not _is_comm_error(exc):
            raise
        reason = _one_line(exc).split(". ")[0]
        raise CommLost(f"rank {ctx.rank}: lost the other processes ({reason}); "
                       f"one of them failed or hung longer than the {ctx.timeout_s:g} s timeout: "
                       "see its output") from exc


def all_mean(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The mean of `values` over the ranks, the same on every rank (each rank's shard is
    the same size, so the mean of shard means is the global batch's mean)."""
    if not ctx.ddp:
        return values
    values = values.to(ctx.device)
    with comm_errors(ctx):
        dist.all_reduce(values)  # SUM: gloo's AVG is recent (torch 2.6 lacks it)
    return values.cpu() / ctx.world_size


__all__ = ["DistContext", "PeerFailed", "CommLost", "process_group", "world_size", "launch_rank",
           "launched", "check_batch_split", "together", "comm_errors", "all_mean",
           "DEFAULT_TIMEOUT_S"]
