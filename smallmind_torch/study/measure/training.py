"""The seed's two bottlenecks that are not about inference: the embedding gradient (#7, "10-15 %
of time, training") and model initialization (#8, "one-time").

- `measure_training_step(model, preset, ...)`: one optimizer step (forward, backward, AdamW)
  on a fixed batch, on a copy of the model (its weights stay as they were): ms per step,
  training tokens/s, allocations per step, and the time split over TRAINING_CATEGORIES (the
  forward labels, the backward of each, the loss, the optimizer step);
- `measure_init(config, form)`: the time to construct the model with each `init` form.
Workspace, KV cache and fused decode are inference forms: a training step runs the preset's
allocating forms (its LayerNorm, matmul, attention, softmax and embedding forms).
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import asdict

import torch

from ...config import ModelConfig, OptConfig
from ...labels import TRAINING_CATEGORIES, region
from ...model import GPT
from ...ops import CustomOpsUnavailable
from ...train.loop import TrainConfig, lm_loss, make_optimizer
from ..protocol.profiling import profile_call, training_split_from_events
from ..protocol.timing import sample_times, spread
from ..results import InitResult, TrainingResult


def _step_fn(model, batch, seed: int):
    g = torch.Generator().manual_seed(seed)
    B, T = batch
    x = torch.randint(0, model.config.vocab_size, (B, T), generator=g)
    y = torch.randint(0, model.config.vocab_size, (B, T), generator=g)
    optimizer = make_optimizer(model, TrainConfig())

    def step():
        with region("loss"):
            loss = lm_loss(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with region("optimizer"):
            optimizer.step()
    return step


def measure_training_step(model, preset: "str | OptConfig", *, batch=(8, 128), steps: int = 3,
                          seed: int = 1234, profile: bool = True, name: "str | None" = None
                          ) -> TrainingResult:
    """Figures of one training step of `preset` at `batch` = (B, T) on a copy of `model`."""
    name = name or (preset if isinstance(preset, str) else "custom")
    batch = (batch[0], min(batch[1], model.config.block_size))
    result = TrainingResult(name, "ok", shape=asdict(model.config), batch=batch)
    work = copy.deepcopy(model).train()
    try:
        work.set_phase(preset)
    except CustomOpsUnavailable as exc:
        result.status, result.reason = "unavailable", str(exc)
        return result
    try:
        step = _step_fn(work, batch, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "workspace=True applies to inference only"
            times = sample_times(step, warmup=1, repeat=steps)
            result.spread = {"ms_per_step": spread([1e3 * t for t in times])}
            result.ms_per_step = result.spread["ms_per_step"]["median"]
            result.tokens_per_s = batch[0] * batch[1] / (result.ms_per_step / 1e3)
            if profile:
                prof = profile_call(step, 1, splitter=training_split_from_events,
                                    categories=TRAINING_CATEGORIES)
                result.allocs_per_step = prof.allocs_per_token
                result.mb_per_step = prof.bytes_per_token / 1e6
                result.time_split = prof.split_percent
                result.time_split_ms = prof.split_ms
    except Exception as exc:  # noqa: BLE001 - reported in the row
        result.status, result.reason = "error", f"{type(exc).__name__}: {exc}"
    return result


def measure_init(config: ModelConfig, form: str, *, repeat: int = 3) -> InitResult:
    """Time to construct GPT(config) with init form `form` ("default" or "fast")."""
    opt = OptConfig(init=form)
    times = [1e3 * t for t in sample_times(lambda: GPT(config, phase=opt), warmup=1, repeat=repeat)]
    s = spread(times)
    return InitResult(asdict(config), form, s["median"], s)
