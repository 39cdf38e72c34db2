"""The result types of the weight formats' part (measure/quantized.py, measure/quality.py):
speed, accuracy and the quality scoreboard of each format; data only like every result type,
imported by results/__init__.py."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..data import Data


@dataclass
class FormatAccuracy(Data):
    phase: str
    max_abs_logit_diff: float
    logit_diff_quantiles: dict                    # "p50", "p90", "p99" of |logit diff|
    # per prompt (QuantizedResult.settings["prompts"] names them): {"50": fraction of equal tokens}
    greedy_agreement: dict = field(default_factory=dict)
    first_divergence: dict = field(default_factory=dict)   # ... {"50": index of the first difference}
    val_loss: float | None = None
    val_loss_reference: float | None = None
    DERIVED = ("val_loss_change",)

    @property
    def val_loss_change(self) -> float | None:
        if self.val_loss is None or self.val_loss_reference is None:
            return None
        return self.val_loss - self.val_loss_reference


@dataclass
class FormatQuality(Data):
    """A lossy format against fp32 reference, teacher-forced over an evaluation set
    (measure/quality.py): per-token negative log-likelihoods (nats) and their standard errors,
    the KL divergence of the next-token distributions, the top token, the correct token's
    probability."""

    phase: str
    positions: int                     # positions scored: windows x block_size
    windows: int
    block_size: int
    nll_reference: float               # mean NLL of fp32 reference, and its standard error
    nll_reference_se: float
    nll: float                         # ... of the format
    nll_se: float
    delta_nll: float                   # mean of the paired per-token differences (format - fp32)
    delta_nll_se: float
    kl_mean: float                     # KL(p_fp32 || p_format) per position (nats)
    kl_mean_se: float
    kl_median: float
    kl_p99: float
    kl_max: float
    same_top_percent: float            # positions whose argmax is fp32's
    delta_p: dict                      # p_format - p_fp32 of the next token: p1 ... p99, mean, rms
    DERIVED = ("ppl_reference", "ppl_reference_se", "ppl", "ppl_se")

    @property
    def ppl_reference(self) -> float:
        return math.exp(self.nll_reference)

    @property
    def ppl_reference_se(self) -> float:
        return self.ppl_reference * self.nll_reference_se  # SE(exp(m)) ~= exp(m) SE(m)

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    @property
    def ppl_se(self) -> float:
        return self.ppl * self.nll_se


@dataclass
class FormatSpeed(Data):
    """One weight format at one thread count (measure/quantized.py)."""

    format: str
    threads: int
    ran: str                           # what ran (for max / max-int8: which candidate)
    weights: str
    decode_weight_bytes: int           # bytes of weights one decode step reads
    tokens_per_s: dict                 # spread() of the runs
    decode_ms: dict | None
    x_first: float                     # median tokens/s over the first format's


@dataclass
class QuantizedResult(Data):
    speed: list[FormatSpeed]
    accuracy: dict[str, FormatAccuracy]  # lossy formats only
    settings: dict                     # settings["quality"]: the scoreboard's evaluation set
    quality: dict[str, FormatQuality] = field(default_factory=dict)  # lossy formats only
