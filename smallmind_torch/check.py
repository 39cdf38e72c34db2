"""The one correctness check: a phase's logits and greedy tokens against those of
`config.reference_for(opt)` on the same weights (reference's forms; for a lossy weight format,
on the same rounded weights).

The study (study/measure/preset.py, the peers) and tuning.py, which checks max's candidates
before it times them, both check with it; it sits in the model half so that both can.
"""
from __future__ import annotations

import torch

from .config import OptConfig, reference_for


def first_mismatch(tokens, expected) -> "int | None":
    """Index of the first token that differs (tensors or lists of ids); the shorter length
    when one is a prefix of the other; None when they are equal."""
    tokens = tokens.tolist() if hasattr(tokens, "tolist") else list(tokens)
    expected = expected.tolist() if hasattr(expected, "tolist") else list(expected)
    for i, (a, b) in enumerate(zip(tokens, expected)):
        if a != b:
            return i
    return None if len(tokens) == len(expected) else min(len(tokens), len(expected))


class ReferenceRun:
    """What every phase is checked against: the logits of reference_for(opt) on `check_x` and
    its greedy tokens after `prompt`, computed once per model (its weights) and weight format
    (`outputs`); `logits` and `tokens` are fp32 reference's."""

    def __init__(self, model, check_x: torch.Tensor, prompt: torch.Tensor, new_tokens: int):
        self.check_x = check_x
        self.prompt = prompt.to(check_x.device).view(1, -1)[:, -model.config.block_size:]
        self.new_tokens = new_tokens
        self._outputs = {}
        self.logits, self.tokens = self.outputs(model, OptConfig())

    def outputs(self, model, opt: OptConfig) -> tuple:
        """(logits, tokens) of reference_for(opt): reference's forms on opt's weight format."""
        reference = reference_for(opt)
        if reference.weights not in self._outputs:
            with model.using(reference), torch.no_grad():
                logits = model(self.check_x).float().cpu()
                tokens = model.generate(self.prompt, self.new_tokens, temperature=0.0)[
                    0, self.prompt.size(1):].cpu()
            self._outputs[reference.weights] = (logits, tokens)
        return self._outputs[reference.weights]

    def compare(self, model, opt: OptConfig, logits, tokens) -> tuple:
        """(max |logit difference|, first mismatching token or None) of a phase's `logits` on
        check_x and greedy `tokens` against reference_for(opt)'s."""
        expected_logits, expected_tokens = self.outputs(model, opt)
        return (float((logits - expected_logits).abs().max()),
                first_mismatch(tokens, expected_tokens))
