"""The study's measurements of one preset, as the protocol in docs/study.md describes them.

For one model (one set of weights) and a preset (a name from config.presets() or an OptConfig):
correctness first (logits and greedy tokens against `reference`, smallmind_torch/check.py: a preset
that disagrees is reported FAILED and not benchmarked; one whose custom ops cannot run,
"unavailable"), then tokens/s, decode step, prefill, memory and time split (profiling), matmul
GFLOPS and the roofline against the machine's limits measured in the same run (machine).

Everything is keyword-configurable (`BenchSettings`) so that tests run on tiny shapes.
`run.run_study` runs every preset, the peers and the machine limits in one go.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict

import torch

from ...compiled import compiled_graphs
from ...config import OptConfig, check_tolerance
from ...machine_load import machine_load
from ...ops import CustomOpsUnavailable
from ...check import ReferenceRun, first_mismatch
from ...weight_formats import decode_weight_bytes
from ..protocol.machine import environment, matmul_gflops, roofline
from ..protocol.profiling import profile_generation
from ..protocol.settings import (BenchSettings, check_input, device_of, fixed_prompt,
                                 progress_bar)
from ..protocol.timing import device_sync, sample_times, spread
from ..results import Check, MachineLimits, PhaseResult


def reference_run(model, settings: BenchSettings = BenchSettings(), prompt=None) -> ReferenceRun:
    """The ReferenceRun of the protocol: the check input and the fixed prompt of `settings`
    (or `prompt`, e.g. encoded text), `settings.new_tokens` greedy tokens."""
    device = device_of(model)
    if prompt is None:
        prompt = fixed_prompt(model.config, settings.prompt_len, settings.seed, device)
    return ReferenceRun(model, check_input(model.config, settings.seed, device), prompt,
                        settings.new_tokens)


# ---- generation timing -----------------------------------------------------------------------

def timed_stream(model, prompt, new_tokens: int) -> tuple:
    """One greedy generation through `generate_stream`: (tokens (new_tokens,), total seconds,
    per-token intervals in seconds). Interval 0 is prefill + first token; interval k >= 1 is
    one decode step (the forward of token k-1, then argmax)."""
    device = prompt.device
    tokens, stamps = [], []
    device_sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for tok in model.generate_stream(prompt, new_tokens, temperature=0.0):
            device_sync(device)
            stamps.append(time.perf_counter())
            tokens.append(tok)
    total = time.perf_counter() - start
    intervals = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
    return torch.cat(tokens, dim=1)[0].cpu(), total, intervals


def measure_generation(model, prompt, new_tokens: int, runs: int, *, warmup: bool = True,
                       progress=False, desc="generate"):
    """Warm-up run (returned tokens; None with warmup=False) + `runs` timed runs: (tokens,
    {"tokens_per_s": [per run], "decode_ms": [median decode step of each run], "other_cores":
    [the cores other processes kept busy over the timed runs]}; no decode_ms when
    new_tokens < 2, no other_cores where machine_load cannot tell)."""
    tokens = None
    runs_of = {"tokens_per_s": [], "decode_ms": []}
    with progress_bar(runs + int(warmup), desc, progress) as bar:
        if warmup:
            tokens, _, _ = timed_stream(model, prompt, new_tokens)
            if bar is not None:
                bar.update()
        with machine_load() as load:
            for _ in range(runs):
                _, total, intervals = timed_stream(model, prompt, new_tokens)
                runs_of["tokens_per_s"].append(new_tokens / total)
                if len(intervals) > 1:
                    runs_of["decode_ms"].append(1e3 * statistics.median(intervals[1:]))
                if bar is not None:
                    bar.update()
    if runs and load.other_cores is not None:
        runs_of["other_cores"] = [load.other_cores]
    return tokens, {k: v for k, v in runs_of.items() if v}


# ---- one preset ------------------------------------------------------------------------------

def measure_preset(model, preset: "str | OptConfig", settings: BenchSettings = BenchSettings(), *,
                   reference: "ReferenceRun | None" = None, machine: "MachineLimits | None" = None,
                   name: "str | None" = None, progress: bool = False) -> PhaseResult:
    """All figures of one preset on `model`'s weights; the model's phase is restored after.
    `result.phase` says what ran (phases.resolve: for "max", which candidate)."""
    name = name or (preset if isinstance(preset, str) else "custom")
    result = PhaseResult(name, "ok", env=environment(device_of(model)), settings=settings.to_dict())
    reference = reference or reference_run(model, settings)
    try:
        with model.using(preset):
            _measure(model, result, settings, reference, machine, progress)
    except CustomOpsUnavailable as exc:  # when set, or a custom op that fails when first used
        result.status, result.reason = "unavailable", str(exc)
    except Exception as exc:
        result.status, result.reason = "error", f"{type(exc).__name__}: {exc}"
    return result


def _measure(model, result: PhaseResult, settings: BenchSettings, reference: ReferenceRun,
             machine: "MachineLimits | None", progress: bool) -> None:
    """measure_preset's figures of the model's phase, into `result`."""
    opt, device = model.phase.opt, device_of(model)
    result.opt, result.phase = asdict(opt), model.phase.description
    prompt, n = reference.prompt, settings.new_tokens
    if opt.compile != "off":  # compile time apart from steady-state speed
        graphs = compiled_graphs()
        start = time.perf_counter()
        with torch.no_grad():
            model(reference.check_x)
            model.generate(prompt, 2)
        result.compile_s = time.perf_counter() - start
        result.graphs_compiled = compiled_graphs() - graphs
    # correctness first: logits on the fixed input, then the warm-up run's greedy tokens
    with torch.no_grad():
        logits = model(reference.check_x).float().cpu()
    tokens, _, _ = timed_stream(model, prompt, n)  # the protocol's warm-up run
    max_diff, mismatch = reference.compare(model, opt, logits, tokens)
    result.check = Check(max_diff, mismatch is None, check_tolerance(opt, settings.tolerance),
                         mismatch, opt.weights)
    if opt.weights != "fp32":  # what the format costs, against fp32 reference
        divergence = first_mismatch(tokens, reference.tokens)
        result.accuracy = {
            "max_abs_logit_diff": float((logits - reference.logits).abs().max()),
            "greedy_agreement": float((tokens == reference.tokens).float().mean()),
            "first_divergence": len(tokens) if divergence is None else divergence,
            "tokens": len(tokens)}
    if not result.check.passed:
        result.status, result.reason = "FAILED", result.check.describe()
        return
    graphs = compiled_graphs()
    _, runs_of = measure_generation(model, prompt, n, settings.runs, warmup=False,
                                    progress=progress, desc=f"{result.name}: generate")
    if opt.compile != "off":
        result.recompiles = compiled_graphs() - graphs
    with torch.no_grad():
        x = reference.check_x
        runs_of["prefill_ms"] = [1e3 * t for t in sample_times(
            lambda: model(x), warmup=1, repeat=settings.prefill_repeat, device=device)]
    other_cores = runs_of.pop("other_cores", [None])[0]
    result.spread = {k: spread(v, other_cores) for k, v in runs_of.items()}
    result.tokens_per_s = result.spread["tokens_per_s"]["median"]
    result.decode_ms = result.spread["decode_ms"]["median"] if "decode_ms" in runs_of else None
    result.prefill_ms = result.spread["prefill_ms"]["median"]
    if settings.profile:
        prof = profile_generation(model, prompt, n)
        result.bytes_per_token = prof.bytes_per_token
        result.allocs_per_token = prof.allocs_per_token
        result.time_split = prof.split_percent
        result.time_split_ms = prof.split_ms
    result.gflops, mm_now = matmul_gflops(opt, settings.gemm_sizes, device=device,
                                          repeat=settings.gemm_repeat)
    if machine is not None:
        result.roofline = roofline(result, machine, mm_now, decode_weight_bytes(model))
