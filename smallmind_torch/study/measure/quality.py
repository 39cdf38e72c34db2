"""The scoreboard of a lossy weight format against fp32 reference, teacher-forced over an
evaluation token stream (what llama.cpp's `perplexity --kl-divergence` reports):

- the perplexity of fp32 and of the format, each with its standard error (PPL = exp(mean NLL);
  SE(PPL) ~= PPL * SE(mean NLL), the SE from the per-token NLLs), and the change in mean NLL
  with the SE of the paired per-token differences: the figure that says whether a change is
  real or noise of the evaluation set;
- KL(p_fp32 || p_format) of the next-token distribution per position: mean (with SE), median,
  p99, max;
- the share of positions whose most likely token is fp32's;
- the change in the correct next token's probability, p_format - p_fp32 ("delta p"):
  percentiles, mean and RMS.

The stream is cut into non-overlapping windows of block_size tokens, and every position of
every window is scored against the same fp32 prefix (divergence.py), so one flipped near-tie
changes one position, unlike free-running greedy agreement (measure/quantized.py).
"""
from __future__ import annotations

import math
from dataclasses import asdict

import torch

from ...config import OptConfig
from ...divergence import teacher_forced_scores, windows_of
from ..results import FormatQuality

DELTA_P_PERCENTILES = (1, 5, 50, 95, 99)
RANDOM_STREAM_SEED = 4321


def phase_name(phase) -> str:
    """A preset's name, or an OptConfig's switches that differ from reference."""
    if isinstance(phase, str):
        return phase
    changed = {k: v for k, v in asdict(phase).items() if getattr(OptConfig(), k) != v}
    return ", ".join(f"{k}={v!r}" for k, v in changed.items()) or "reference"


VALIDATION_SET = "the validation split of the default corpus (its last 10 %)"


def validation_stream() -> torch.Tensor:
    """VALIDATION_SET's tokens: the evaluation set of the trained checkpoint (and its loss)."""
    from ...train.corpus import default_tokens, train_val_split
    from ...train.tokenizer import Tokenizer

    return train_val_split(default_tokens(Tokenizer.default()))[1]


def random_stream(config, windows: int, seed: int = RANDOM_STREAM_SEED) -> torch.Tensor:
    """A fixed stream of random token ids long enough for `windows` windows of block_size: the
    evaluation set of a model with random weights (which has no corpus to be evaluated on)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (windows * config.block_size + 1,), generator=g)


def format_quality(model, phase, tokens: torch.Tensor, *, block_size: "int | None" = None,
                   batch_size: int = 8, max_windows: "int | None" = None) -> FormatQuality:
    """`phase` (a preset name or an OptConfig) against fp32 `reference` on `model`'s weights,
    teacher-forced over the 1-D token stream `tokens` cut into non-overlapping windows of
    `block_size` (default: the model's context), at most `max_windows` of them, `batch_size`
    windows per forward. The model's phase is restored."""
    block_size = block_size or model.config.block_size
    if not 1 <= block_size <= model.config.block_size:
        raise ValueError(f"block_size must be in [1, {model.config.block_size}] (the model's "
                         f"context), got {block_size}")
    windows = windows_of(tokens, block_size, max_windows)
    scores = teacher_forced_scores(model, {"format": phase}, windows, batch_size)["format"]
    nll_ref, nll = scores["nll_reference"], scores["nll"]
    p_change = torch.exp(-nll) - torch.exp(-nll_ref)
    kl = scores["kl"]
    return FormatQuality(
        phase=phase_name(phase), positions=len(kl), windows=len(windows), block_size=block_size,
        nll_reference=float(nll_ref.mean()), nll_reference_se=_standard_error(nll_ref),
        nll=float(nll.mean()), nll_se=_standard_error(nll),
        delta_nll=float((nll - nll_ref).mean()), delta_nll_se=_standard_error(nll - nll_ref),
        kl_mean=float(kl.mean()), kl_mean_se=_standard_error(kl),
        kl_median=percentile(kl, 50), kl_p99=percentile(kl, 99), kl_max=float(kl.max()),
        same_top_percent=100.0 * float(scores["same_top"].double().mean()),
        delta_p={**{f"p{q}": percentile(p_change, q) for q in DELTA_P_PERCENTILES},
                 "mean": float(p_change.mean()), "rms": float(p_change.square().mean().sqrt())})


def _standard_error(values: torch.Tensor) -> float:
    """The standard error of the mean of `values` (sample standard deviation / sqrt(n))."""
    n = len(values)
    return float(values.std(correction=1) / math.sqrt(n)) if n > 1 else float("nan")


def percentile(values: torch.Tensor, q: float) -> float:
    """The q-th percentile, linear between the closest ranks (as numpy's default); any size
    (torch.quantile stops at 2^24 values)."""
    ordered = values.double().sort().values
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))
