"""What a weight format costs in accuracy: int8 weights are not the reference up to float
rounding, so their error is measured, not checked to 1e-4 (config.LOSSY_FORMS).

For one model, a lossy phase against `reference` on the same weights: the max |logit
difference| and its distribution over every position of the check input, greedy-token
agreement over 50 and 200 new tokens (the fraction of positions equal, and how far the two
agree from the start), and, when validation data is given, the validation loss under both.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ..config import OptConfig
from ..train.corpus import get_batch
from ..train.loop import lm_loss
from .harness import _first_mismatch, check_input, fixed_prompt

AGREEMENT_TOKENS = (50, 200)


@dataclass
class FormatAccuracy:
    phase: str
    max_abs_logit_diff: float
    logit_diff_quantiles: dict            # "p50", "p90", "p99" of |logit diff|
    greedy_agreement: dict = field(default_factory=dict)   # "50": fraction of equal tokens
    first_divergence: dict = field(default_factory=dict)   # "50": index of the first difference
    val_loss: "float | None" = None
    val_loss_reference: "float | None" = None

    @property
    def val_loss_change(self) -> "float | None":
        if self.val_loss is None or self.val_loss_reference is None:
            return None
        return self.val_loss - self.val_loss_reference

    def to_dict(self) -> dict:
        return {**asdict(self), "val_loss_change": self.val_loss_change}


def _run(model, phase, x, prompt, val) -> tuple:
    """Under `phase`: the logits of x, the greedy continuation of the prompt (as long as the
    longest agreement count), the validation loss (None without data)."""
    model.set_phase(phase)
    with torch.inference_mode():
        tokens = model.generate(prompt, max(AGREEMENT_TOKENS))[0, prompt.size(1):]
        return model(x), tokens, None if val is None else _loss(model, val)


def weight_format_accuracy(model, phase, val_data: "torch.Tensor | None" = None,
                           val_batches: int = 10, batch_size: int = 8) -> FormatAccuracy:
    """`phase` (a preset name or an OptConfig, e.g. phase3 with weights='int8') against
    reference on `model`'s weights; the model is left in reference. Generation longer than
    block_size crops the context as generate always does."""
    config = model.config
    x, prompt = check_input(config), fixed_prompt(config)
    val = None if val_data is None else _val_batches(val_data, config.block_size, val_batches,
                                                     batch_size)
    logits, tokens, loss = _run(model, phase, x, prompt, val)
    ref_logits, ref_tokens, ref_loss = _run(model, "reference", x, prompt, val)
    diff = (logits - ref_logits).abs().flatten()
    # torch.quantile takes at most 2^24 values; the check input gives block_size x vocab
    quantiles = torch.quantile(diff[:2**24].double(),
                               torch.tensor([0.5, 0.9, 0.99], dtype=torch.double))
    result = FormatAccuracy(
        phase=_phase_name(phase), max_abs_logit_diff=float(diff.max()),
        logit_diff_quantiles=dict(zip(("p50", "p90", "p99"), map(float, quantiles))),
        val_loss=loss, val_loss_reference=ref_loss)
    for n in AGREEMENT_TOKENS:  # greedy: the first n tokens of the longest continuation
        result.greedy_agreement[str(n)] = float((tokens[:n] == ref_tokens[:n]).float().mean())
        mismatch = _first_mismatch(tokens[:n], ref_tokens[:n])
        result.first_divergence[str(n)] = n if mismatch is None else mismatch
    return result


def _phase_name(phase) -> str:
    """A preset's name, or an OptConfig's switches that differ from reference."""
    if isinstance(phase, str):
        return phase
    changed = {k: v for k, v in asdict(phase).items() if getattr(OptConfig(), k) != v}
    return ", ".join(f"{k}={v!r}" for k, v in changed.items()) or "reference"


def _val_batches(data, block_size, n, batch_size) -> list:
    g = torch.Generator().manual_seed(1338)  # the same batches for every format
    return [get_batch(data, batch_size, block_size, g) for _ in range(n)]


def _loss(model, batches) -> float:
    return sum(float(lm_loss(model, x, y)) for x, y in batches) / len(batches)
