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
from .harness import check_input, fixed_prompt

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


def _greedy(model, prompt, n):
    return model.generate(prompt, n, temperature=0.0)[:, prompt.size(1):]


def weight_format_accuracy(model, phase, val_data: "torch.Tensor | None" = None,
                           val_batches: int = 10, batch_size: int = 8) -> FormatAccuracy:
    """`phase` (a preset name or an OptConfig, e.g. phase3 with weights='int8') against
    reference on `model`'s weights; the model is left in reference. Generation longer than
    block_size crops the context as generate always does."""
    config = model.config
    x = check_input(config)
    prompt = fixed_prompt(config)
    val = None if val_data is None else _val_batches(val_data, config.block_size, val_batches,
                                                     batch_size)
    runs = {}
    for name in ("reference", phase):
        model.set_phase(name)
        with torch.inference_mode():
            runs[name is phase] = (model(x),
                                   {n: _greedy(model, prompt, n) for n in AGREEMENT_TOKENS},
                                   None if val is None else _loss(model, val))
    model.set_phase("reference")
    (ref_logits, ref_tokens, ref_loss), (logits, tokens, loss) = runs[False], runs[True]
    diff = (logits - ref_logits).abs().flatten()
    # torch.quantile takes at most 2^24 values; the check input gives block_size x vocab
    quantiles = torch.quantile(diff[:2**24].double(),
                               torch.tensor([0.5, 0.9, 0.99], dtype=torch.double))
    result = FormatAccuracy(
        phase=_phase_name(phase), max_abs_logit_diff=float(diff.max()),
        logit_diff_quantiles=dict(zip(("p50", "p90", "p99"), map(float, quantiles))),
        val_loss=loss, val_loss_reference=ref_loss)
    for n in AGREEMENT_TOKENS:
        equal = (tokens[n] == ref_tokens[n])[0]
        result.greedy_agreement[str(n)] = float(equal.float().mean())
        differs = (~equal).nonzero()
        result.first_divergence[str(n)] = int(differs[0]) if len(differs) else n
    return result


def _phase_name(phase) -> str:
    """A preset's name, or an OptConfig's switches that differ from reference."""
    if isinstance(phase, str):
        return phase
    changed = {k: v for k, v in asdict(phase).items() if getattr(OptConfig(), k) != v}
    return ", ".join(f"{k}={v!r}" for k, v in changed.items()) or "reference"


def _val_batches(data, block_size, n, batch_size):
    g = torch.Generator().manual_seed(1338)  # the same batches for every format
    starts = torch.randint(0, len(data) - block_size - 1, (n, batch_size), generator=g)
    return [(torch.stack([data[s:s + block_size] for s in row]),
             torch.stack([data[s + 1:s + 1 + block_size] for s in row])) for row in starts]


def _loss(model, batches) -> float:
    total = 0.0
    for x, y in batches:
        logits = model(x)
        total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()))
    return total / len(batches)
