"""What a weight format gains in speed and costs in accuracy: int8, w8a8, int4 and bf16 weights are not
the reference up to float rounding, so their error against fp32 is measured
(config.LOSSY_FORMS).

Quality, the scoreboard (quality.py): perplexity, KL divergence, top-token agreement and the
change in the correct token's probability, teacher-forced over an evaluation token stream.

Accuracy, for one model, a lossy phase against `reference` on the same weights: the max |logit
difference| and its distribution over every position of the check input, greedy-token
agreement, free running (a cliff: one near-tie changes every later token), over 50 and 200
new tokens after each named prompt (the fraction of positions equal, and how far the two agree
from the start: the study's prompt, whose 50 tokens are the main table's figure, and the fixed
random ids), and, when validation data is given, the validation loss under both.

Speed: every format of FORMATS on the same weights, each in its own model of one process,
alternating run by run at each thread count (the protocol's generation: tokens/s with
prefill, median decode step).
"""
from __future__ import annotations

import statistics

import torch

from ...config import MAX_CANDIDATES, MAX_INT8_CANDIDATES
from ...threads import threads
from ...train.corpus import get_batch
from ...train.loop import lm_loss
from ...check import first_mismatch
from ...weight_formats import decode_weight_bytes
from ..protocol.settings import BenchSettings, check_input, describe_prompt, fixed_prompt
from ..protocol.timing import spread
from ..results import FormatAccuracy, FormatSpeed, QuantizedResult
from .preset import measure_generation
from .quality import RANDOM_STREAM_SEED, format_quality, percentile, phase_name, random_stream

AGREEMENT_TOKENS = (50, 200)

# label -> phase: fp32 `max` first (every ratio is against it), then the quantized ones: the
# two int8 fused decode steps `max-int8` chooses between (the main table says which it chose),
# `max-int4` (its row says which candidate ran: int4 weights in groups of 32, int8 activations)
FORMATS = {
    "fp32 (max)": "max",
    "int8 (fused decode)": MAX_INT8_CANDIDATES["int8 fused decode"],
    "w8a8 (fused decode)": MAX_INT8_CANDIDATES["w8a8 fused decode"],
    "int4 (max-int4)": "max-int4",
    "bf16 (custom ops)": MAX_CANDIDATES["custom ops"].replace(weights="bf16"),
}


RANDOM_PROMPT = "random ids"   # fixed_prompt's: the prompt set's name when none is given


def _run(model, phase, x, prompts: dict, val) -> tuple:
    """Under `phase`: the logits of x, {name: the greedy continuation of each prompt} (as long as
    the longest agreement count), the validation loss (None without data)."""
    with model.using(phase), torch.inference_mode():
        tokens = {name: model.generate(p, max(AGREEMENT_TOKENS))[0, p.size(1):]
                  for name, p in prompts.items()}
        return model(x), tokens, None if val is None else _loss(model, val)


def weight_format_accuracy(model, phase, val_data: "torch.Tensor | None" = None,
                           val_batches: int = 10, batch_size: int = 8,
                           prompts: "dict | None" = None) -> FormatAccuracy:
    """`phase` (a preset name or an OptConfig, e.g. phase3 with weights='int8') against
    reference on `model`'s weights; the model's phase is restored after. `prompts`: {name: (1, T)
    token ids} whose greedy continuations are compared (default: {RANDOM_PROMPT: fixed_prompt}).
    Generation longer than block_size crops the context as generate always does."""
    config = model.config
    x = check_input(config)
    prompts = prompts or {RANDOM_PROMPT: fixed_prompt(config)}
    val = None if val_data is None else _val_batches(val_data, config.block_size, val_batches,
                                                     batch_size)
    logits, tokens, loss = _run(model, phase, x, prompts, val)
    ref_logits, ref_tokens, ref_loss = _run(model, "reference", x, prompts, val)
    diff = (logits - ref_logits).abs().flatten()
    result = FormatAccuracy(
        phase=phase_name(phase), max_abs_logit_diff=float(diff.max()),
        logit_diff_quantiles={f"p{q}": percentile(diff, q) for q in (50, 90, 99)},
        val_loss=loss, val_loss_reference=ref_loss)
    for name in prompts:
        ours, ref = tokens[name], ref_tokens[name]
        agree, first = result.greedy_agreement.setdefault(name, {}), result.first_divergence.setdefault(name, {})
        for n in AGREEMENT_TOKENS:  # greedy: the first n tokens of the longest continuation
            agree[str(n)] = float((ours[:n] == ref[:n]).float().mean())
            mismatch = first_mismatch(ours[:n], ref[:n])
            first[str(n)] = n if mismatch is None else mismatch
    return result


def _val_batches(data, block_size, n, batch_size) -> list:
    g = torch.Generator().manual_seed(1338)  # the same batches for every format
    return [get_batch(data, batch_size, block_size, g) for _ in range(n)]


def _loss(model, batches) -> float:
    return sum(float(lm_loss(model, x, y)) for x, y in batches) / len(batches)


# ---- speed and accuracy of every format, for the report --------------------------------------

def measure_speed(model, formats: "dict | None" = None, thread_counts=(1, 2), runs: int = 5,
                  new_tokens: int = 50, prompt=None) -> list:
    """A FormatSpeed per (thread count, format): tokens/s and decode ms (spread of the runs),
    the ratio to the first format's median tokens/s, what ran (for max / max-int8: which
    candidate) and the bytes of weights a decode step reads. Each format runs in its own copy
    of `model`; formats alternate run by run after a warm-up run each."""
    from ...model import GPT

    formats = formats or FORMATS
    prompt = prompt if prompt is not None else fixed_prompt(model.config)
    rows = []
    for n in thread_counts:
        with threads(n):
            models = {}
            for label, phase in formats.items():  # set in the thread count: max measures in it
                copy = GPT(model.config).eval()
                copy.load_state_dict(model.state_dict())
                models[label] = copy.set_phase(phase)
            figures = {label: {"tokens_per_s": [], "decode_ms": []} for label in models}
            for m in models.values():
                measure_generation(m, prompt, new_tokens, 1)  # warm-up
            for _ in range(runs):
                for label, m in models.items():
                    _, run = measure_generation(m, prompt, new_tokens, 1, warmup=False)
                    for key in figures[label]:
                        figures[label][key] += run.get(key, [])
        base = statistics.median(figures[next(iter(models))]["tokens_per_s"])
        for label, f in figures.items():
            tps = spread(f["tokens_per_s"])
            phase = models[label].phase
            rows.append(FormatSpeed(label, n, phase.description.split(" (")[0], phase.opt.weights,
                                    decode_weight_bytes(models[label]), tps,
                                    spread(f["decode_ms"]) if f["decode_ms"] else None,
                                    tps["median"] / base))
    return rows


def lossy_formats(model, formats: "dict | None" = None) -> dict:
    """{label: the OptConfig that runs} of the formats (default: FORMATS) whose weights are not
    fp32 (for max-int8: its candidate)."""
    lossy = {}
    for label, phase in (formats or FORMATS).items():
        with model.using(phase):
            opt = model.phase.opt
        if opt.weights != "fp32":
            lossy[label] = opt
    return lossy


def quality_scoreboard(model, tokens: "torch.Tensor | None" = None, *,
                       formats: "dict | None" = None, evaluation_set: "str | None" = None,
                       max_windows: "int | None" = None, batch_size: int = 8) -> tuple:
    """({label: FormatQuality} of every lossy format, the evaluation set's description): each
    scored against fp32 reference over `tokens` (default: the fixed random stream of
    `max_windows` windows, 16 when not given), named `evaluation_set`."""
    if tokens is None:
        tokens = random_stream(model.config, max_windows or 16)
        evaluation_set = f"fixed random token ids (seed {RANDOM_STREAM_SEED})"
    quality = {label: format_quality(model, opt, tokens, batch_size=batch_size,
                                     max_windows=max_windows)
               for label, opt in lossy_formats(model, formats).items()}
    first = next(iter(quality.values()), None)
    return quality, {"set": evaluation_set or "a given token stream",
                     "windows": first and first.windows, "block_size": first and first.block_size,
                     "positions": first and first.positions}


def measure_formats(model, val_data=None, *, formats: "dict | None" = None, thread_counts=(1, 2),
                    runs: int = 5, new_tokens: int = 50, val_batches: int = 10,
                    batch_size: int = 8, prompts: "dict | None" = None,
                    quality_tokens: "torch.Tensor | None" = None,
                    quality_set: "str | None" = None,
                    quality_windows: "int | None" = None) -> QuantizedResult:
    """The report's section: speed of every format (measure_speed), the scoreboard of each
    lossy one against fp32 reference (quality_scoreboard over `quality_tokens`, named
    `quality_set`, at most `quality_windows` windows; default: a fixed random stream) and its
    accuracy (weight_format_accuracy, with the validation loss when `val_data` is given).
    `prompts`: {name: (description, (1, T) token ids)}, the prompt set of the greedy agreement
    (default: the fixed random ids)."""
    formats = formats or FORMATS
    prompts = prompts or {RANDOM_PROMPT: (describe_prompt(None, BenchSettings()),
                                          fixed_prompt(model.config))}
    speed = measure_speed(model, formats, thread_counts, runs, new_tokens)
    lossy = lossy_formats(model, formats)
    quality, evaluation = quality_scoreboard(model, quality_tokens, formats=lossy,
                                             evaluation_set=quality_set,
                                             max_windows=quality_windows, batch_size=batch_size)
    accuracy = {label: weight_format_accuracy(
                    model, opt, val_data, val_batches, batch_size,
                    prompts={name: ids for name, (_, ids) in prompts.items()})
                for label, opt in lossy.items()}
    return QuantizedResult(speed, accuracy, {
        "thread_counts": list(thread_counts), "runs": runs, "new_tokens": new_tokens,
        "prompts": {name: text for name, (text, _) in prompts.items()},
        "quality": evaluation}, quality)
