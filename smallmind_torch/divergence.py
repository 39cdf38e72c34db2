"""How far a phase's next-token distributions are from fp32 reference's, teacher-forced: both
read the same token windows, and every position is scored against the same fp32 prefix, so one
near-tie decided the other way changes one position's score, not every later one (as it does
in free-running greedy generation).

Per position, in float64 from the logits (log_softmax): KL(p_fp32 || p_phase), each one's
negative log-likelihood of the next token, whether the two argmaxes agree. The study's
scoreboard (study/measure/quality.py) summarizes them over an evaluation set; tuning.py bounds
`max-int8`'s candidates by their mean KL (config.MAX_INT8_MEAN_KL). It sits in the model half
so that both can use it.
"""
from __future__ import annotations

import torch

SCORES = ("kl", "nll_reference", "nll", "same_top")
# float64 (rows x vocab) temporaries of one chunk of positions: about 4M values per tensor
CHUNK_VALUES = 2**22


def windows_of(tokens: torch.Tensor, block_size: int, max_windows: "int | None" = None) -> torch.Tensor:
    """(W, block_size + 1) non-overlapping windows of a 1-D token stream: each window's
    block_size inputs and, shifted by one, their next tokens; window i starts at i * block_size.
    At most `max_windows` (the first ones)."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1:
        raise ValueError(f"tokens must be a 1-D tensor of token ids, got "
                         f"{getattr(tokens, 'shape', type(tokens).__name__)}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    n = (len(tokens) - 1) // block_size
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise ValueError(f"need at least block_size + 1 = {block_size + 1} tokens for one "
                         f"window, have {len(tokens)}")
    starts = torch.arange(n) * block_size
    return tokens[starts[:, None] + torch.arange(block_size + 1)]


def position_scores(reference_logits: torch.Tensor, logits: torch.Tensor,
                    targets: torch.Tensor) -> dict:
    """{score: (N,) float64 (same_top: bool)} for N positions: the logits (..., V) of fp32
    reference and of the phase, and the next tokens (...). Computed in chunks of positions so
    that a large vocabulary needs no (N, V) float64 tensor."""
    vocab = logits.size(-1)
    reference_logits, logits = reference_logits.reshape(-1, vocab), logits.reshape(-1, vocab)
    targets = targets.reshape(-1, 1)
    rows = max(1, CHUNK_VALUES // vocab)
    parts = {name: [] for name in SCORES}
    for start in range(0, logits.size(0), rows):
        chunk = slice(start, start + rows)
        log_p = torch.log_softmax(reference_logits[chunk].double(), dim=-1)
        log_q = torch.log_softmax(logits[chunk].double(), dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_(min=0.0)  # >= 0 up to rounding
        parts["kl"].append(kl)
        parts["nll_reference"].append(-log_p.gather(1, targets[chunk]).squeeze(1))
        parts["nll"].append(-log_q.gather(1, targets[chunk]).squeeze(1))
        parts["same_top"].append(log_p.argmax(-1) == log_q.argmax(-1))
    return {name: torch.cat(values) for name, values in parts.items()}


def teacher_forced_scores(model, phases: dict, windows: torch.Tensor, batch_size: int = 8) -> dict:
    """{label: position_scores over every position of `windows` (windows_of's)} for each of
    `phases` ({label: a preset name, an OptConfig or a runtime of this model}): `model` run
    under fp32 `reference` once per batch of windows and under each phase on the same batch; no
    logits are kept past their batch. The model's phase is restored."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with model.using("reference"):
        reference = model.phase
    runtimes = {}
    for label, phase in phases.items():
        with model.using(phase):
            runtimes[label] = model.phase
    device = model.transformer.wte.weight.device
    parts = {label: {name: [] for name in SCORES} for label in phases}
    with torch.inference_mode():
        for batch in windows.split(batch_size):
            x, y = batch[:, :-1].to(device), batch[:, 1:].to(device)
            with model.using(reference):
                expected = model(x).float()
            for label, runtime in runtimes.items():
                with model.using(runtime):
                    got = model(x).float()
                for name, values in position_scores(expected, got, y).items():
                    parts[label][name].append(values.cpu())
    return {label: {name: torch.cat(values) for name, values in scores.items()}
            for label, scores in parts.items()}


def mean_kl(model, phases: dict, windows: torch.Tensor, batch_size: int = 8) -> dict:
    """{label: the mean KL(p_fp32 || p_phase) over every position of `windows` (nats)}."""
    return {label: float(scores["kl"].mean())
            for label, scores in teacher_forced_scores(model, phases, windows, batch_size).items()}
