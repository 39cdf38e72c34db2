"""The study's measurements of one preset, as the protocol in docs/study.md describes them.

For one model (one set of weights) and a preset (a name from config.presets() or an OptConfig):
correctness first (logits and greedy tokens against `reference`: a preset that disagrees is
reported FAILED and not benchmarked; one whose custom ops cannot run, "unavailable"), then
tokens/s, decode step, prefill, memory and time split (profiling.py), matmul GFLOPS and the
roofline against the machine's limits measured in the same run (machine.py).

Everything is keyword-configurable (`BenchSettings`) so that tests run on tiny shapes.
`run.run_study` runs every preset, the peers (peers.py) and the machine limits in one go.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from ..compiled import compiled_graphs
from ..config import OptConfig, check_tolerance, reference_for
from ..forms import LINEAR_BY_WEIGHTS
from ..ops import CustomOpsUnavailable
from .machine import environment, last_level_cache_bytes, memory_bandwidth_gbs, mm_gflops
from .profiling import profile_generation
from .results import Check, MachineLimits, PhaseResult, spread
from .timing import device_sync, gflops, median_time, sample_times


@dataclass(frozen=True)
class BenchSettings:
    """Every knob of the protocol; the defaults are the study's (docs/study.md)."""

    new_tokens: int = 50
    runs: int = 3                 # timed generation runs (after one warm-up run)
    prompt_len: int = 16          # length of the fixed prompt
    prefill_repeat: int = 3       # timed full forwards at T = block_size (after one warm-up)
    gemm_sizes: tuple = (128, 256, 512)
    gemm_repeat: int = 5
    peak_mm_sizes: tuple = (128, 256, 512, 1024)  # torch.mm peak = the best of these
    bandwidth_large_bytes: "int | None" = None    # default: 4 x last-level cache, >= 64 MiB
    seed: int = 1234              # fixed prompt and check input
    tolerance: float = 1e-4       # max |logit difference| against reference
    profile: bool = True          # memory and time split (one profiled generation)
    machine_samples: int = 5      # interleaved samples of each machine limit; the best is kept
    smoke: bool = False           # BenchSettings.tiny(): no figure or ratio of it means much

    def __post_init__(self):
        for name in ("new_tokens", "runs", "prompt_len", "prefill_repeat", "gemm_repeat",
                     "machine_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"BenchSettings.{name} must be >= 1")
        object.__setattr__(self, "gemm_sizes", tuple(int(n) for n in self.gemm_sizes))
        object.__setattr__(self, "peak_mm_sizes", tuple(int(n) for n in self.peak_mm_sizes))

    @classmethod
    def tiny(cls, **overrides) -> "BenchSettings":
        """A few tokens, small GEMMs and buffers: seconds, for tests and smoke runs."""
        base = dict(new_tokens=6, runs=2, prompt_len=4, prefill_repeat=1, gemm_sizes=(32, 64),
                    gemm_repeat=1, peak_mm_sizes=(32, 64), bandwidth_large_bytes=8 * 2**20,
                    machine_samples=2, smoke=True)
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        return asdict(self)



# ---- inputs ----------------------------------------------------------------------------------

def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def fixed_prompt(config, length: int = 16, seed: int = 1234, device="cpu") -> torch.Tensor:
    """(1, length) token ids, the same for every preset (random ids from a fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    length = max(1, min(length, config.block_size))
    return torch.randint(0, config.vocab_size, (1, length), generator=g).to(device)


def check_input(config, seed: int = 1234, device="cpu") -> torch.Tensor:
    """(1, block_size) token ids: the fixed input of the logits check and of the prefill timing."""
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, config.vocab_size, (1, config.block_size), generator=g).to(device)


def weight_bytes_per_decode(model) -> int:
    """Bytes of parameters one decode step reads: every weight once (the tied wte/lm_head
    once, as the lm head), plus one row each of wte and wpe."""
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if name.endswith("wpe.weight"):
            total += p[0].numel() * p.element_size()
        else:
            total += p.numel() * p.element_size()
    wte = model.transformer.wte.weight
    return total + wte[0].numel() * wte.element_size()


BYTES_PER_WEIGHT = {"fp32": 4, "int8": 1, "w8a8": 1, "bf16": 2}


def decode_weight_bytes(model) -> int:
    """weight_bytes_per_decode in the format of the model's phase: the matrices of the linear
    layers and the lm head at their format's width (int8, w8a8: plus a float32 scale per row),
    the rest (LayerNorms, biases, the position row, the token row) in float32."""
    fmt = model.opt.weights
    total = weight_bytes_per_decode(model)
    if fmt == "fp32":
        return total
    matrices = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for w in {id(w): w for w in matrices}.values():  # the tied lm head once
        rows, cols = w.shape
        total -= w.numel() * 4
        total += rows * cols * BYTES_PER_WEIGHT[fmt] + (rows * 4 if fmt in ("int8", "w8a8") else 0)
    return total



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


def _progress(total, desc, enabled):
    """A progress bar (tqdm; a widget in Jupyter) when `enabled`; else nothing, not even a
    disabled bar (tqdm's notebook bar warns without ipywidgets even when disabled)."""
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, unit="run")


def progress_over(items, desc: str, enabled: bool):
    """`items` under a progress bar (tqdm) when `enabled`."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False, unit="preset")


def measure_generation(model, prompt, new_tokens: int, runs: int, *, warmup: bool = True,
                       progress=False, desc="generate"):
    """Warm-up run (returned tokens; None with warmup=False) + `runs` timed runs: (tokens,
    {"tokens_per_s": [per run], "decode_ms": [median decode step of each run]}; no decode_ms
    when new_tokens < 2)."""
    tokens = None
    runs_of = {"tokens_per_s": [], "decode_ms": []}
    with _progress(runs + int(warmup), desc, progress) as bar:
        if warmup:
            tokens, _, _ = timed_stream(model, prompt, new_tokens)
            if bar is not None:
                bar.update()
        for _ in range(runs):
            _, total, intervals = timed_stream(model, prompt, new_tokens)
            runs_of["tokens_per_s"].append(new_tokens / total)
            if len(intervals) > 1:
                runs_of["decode_ms"].append(1e3 * statistics.median(intervals[1:]))
            if bar is not None:
                bar.update()
    return tokens, {k: v for k, v in runs_of.items() if v}



# ---- GEMM ------------------------------------------------------------------------------------

def matmul_gflops(opt: OptConfig, sizes=(128, 256, 512), *, device="cpu", repeat=5) -> tuple:
    """({n: GFLOPS of the preset's linear form on `a, w`}, {n: GFLOPS of torch.mm}) on square
    n x n matrices (for int8 / bf16 weights, w's copy in that format: made at the first call,
    before the timing). The two are timed alternately, so that their ratio compares them under
    the same machine state (on a shared machine the rate drifts from second to second)."""
    form = LINEAR_BY_WEIGHTS[opt.weights][opt.matmul]

    def linear(a, w, bias):
        with torch.no_grad():
            return form(a, w, bias)
    ours, aten = {}, {}
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        a = torch.randn(n, n, generator=g).to(device)
        w = torch.randn(n, n, generator=g).to(device)
        candidates = {"ours": lambda: linear(a, w, None), "aten": lambda: torch.mm(a, w.t())}
        times = {name: [] for name in candidates}
        for _ in range(repeat):
            for name, fn in candidates.items():
                times[name].append(median_time(fn, warmup=1, repeat=1, device=device))
        ours[n] = gflops(2 * n**3, statistics.median(times["ours"]))
        aten[n] = gflops(2 * n**3, statistics.median(times["aten"]))
    return ours, aten



# ---- machine limits --------------------------------------------------------------------------

def measure_machine(model=None, settings: BenchSettings = BenchSettings(), *, device=None,
                    progress: bool = False) -> MachineLimits:
    device = torch.device(device) if device is not None else (_device_of(model) if model is not None else torch.device("cpu"))
    weight_bytes = weight_bytes_per_decode(model) if model is not None else 64 * 2**20
    llc = last_level_cache_bytes()
    large = settings.bandwidth_large_bytes or max(64 * 2**20, 4 * (llc or 0))
    sizes = sorted(set(settings.peak_mm_sizes) | set(settings.gemm_sizes))
    probes = {"bandwidth_weights_gbs": lambda: memory_bandwidth_gbs(weight_bytes, device=device, repeat=3),
              "bandwidth_large_gbs": lambda: memory_bandwidth_gbs(large, device=device, repeat=3),
              **{f"mm_{n}_gflops": (lambda n=n: mm_gflops(n, device=device, repeat=settings.gemm_repeat))
                 for n in sizes}}
    samples = {name: [] for name in probes}
    # Interleaved: a burst of load from elsewhere spoils one sample of each limit, not every
    # sample of one; a limit is the best sample (the machine can do at least that).
    with _progress(settings.machine_samples, "machine limits", progress) as bar:
        for _ in range(settings.machine_samples):
            for name, probe in probes.items():
                samples[name].append(probe())
            if bar is not None:
                bar.update()
    best = {name: max(v) for name, v in samples.items()}
    return MachineLimits(weight_bytes, best["bandwidth_weights_gbs"], large,
                         best["bandwidth_large_gbs"], llc,
                         {n: best[f"mm_{n}_gflops"] for n in sizes}, environment(device),
                         spread={name: spread(v) for name, v in samples.items()})


# ---- one preset ------------------------------------------------------------------------------

class ReferenceRun:
    """What every preset is checked against: reference logits on `check_input` and the greedy
    tokens of the benchmark's generation, computed once per model (its weights) and weight
    format (`outputs`; `logits` and `tokens` are fp32 reference's)."""

    def __init__(self, model, settings: BenchSettings = BenchSettings(), prompt=None):
        device = _device_of(model)
        self.settings = settings
        if prompt is None:
            prompt = fixed_prompt(model.config, settings.prompt_len, settings.seed, device)
        self.prompt = prompt.to(device).view(1, -1)[:, -model.config.block_size:]
        self.check_x = check_input(model.config, settings.seed, device)
        self._outputs = {}
        self.logits, self.tokens = self.outputs(model, OptConfig())

    def outputs(self, model, opt: OptConfig) -> tuple:
        """(logits, tokens) of reference_for(opt): reference's forms on opt's weight format."""
        reference = reference_for(opt)
        if reference.weights not in self._outputs:
            previous = model.requested_phase
            model.set_phase(reference)
            try:
                with torch.no_grad():
                    logits = model(self.check_x).float().cpu()
                    tokens = model.generate(self.prompt, self.settings.new_tokens, temperature=0.0)[
                        0, self.prompt.size(1):].cpu()
            finally:
                model.set_phase(previous)
            self._outputs[reference.weights] = (logits, tokens)
        return self._outputs[reference.weights]


def _first_mismatch(a, b) -> "int | None":
    n = min(len(a), len(b))
    diff = (a[:n] != b[:n]).nonzero()
    if len(diff):
        return int(diff[0])
    return None if len(a) == len(b) else n


def measure_preset(model, preset: "str | OptConfig", settings: BenchSettings = BenchSettings(), *,
                   reference: "ReferenceRun | None" = None, machine: "MachineLimits | None" = None,
                   name: "str | None" = None, progress: bool = False) -> PhaseResult:
    """All figures of one preset on `model`'s weights. The model is left in that preset;
    `result.phase` says what ran (phases.resolve: for "max", which candidate)."""
    name = name or (preset if isinstance(preset, str) else "custom")
    device = _device_of(model)
    env = environment(device)
    result = PhaseResult(name, "ok", env=env, settings=settings.to_dict())
    try:
        model.set_phase(preset)
    except ValueError as exc:
        result.status, result.reason = "error", str(exc)
        return result
    except CustomOpsUnavailable as exc:
        result.status, result.reason = "unavailable", str(exc)
        return result
    result.opt, result.phase = asdict(model.opt), model.phase.description
    reference = reference or ReferenceRun(model, settings)
    prompt, n = reference.prompt, settings.new_tokens

    try:
        if model.opt.compile != "off":  # compile time apart from steady-state speed
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
        expected_logits, expected_tokens = reference.outputs(model, model.opt)
        max_diff = float((logits - expected_logits).abs().max())
        tokens, _, _ = timed_stream(model, prompt, n)  # the protocol's warm-up run
        mismatch = _first_mismatch(tokens, expected_tokens)
        result.check = Check(max_diff, mismatch is None,
                             check_tolerance(model.opt, settings.tolerance), mismatch,
                             model.opt.weights)
        if model.opt.weights != "fp32":  # what the format costs, against fp32 reference
            divergence = _first_mismatch(tokens, reference.tokens)
            result.accuracy = {
                "max_abs_logit_diff": float((logits - reference.logits).abs().max()),
                "greedy_agreement": float((tokens == reference.tokens).float().mean()),
                "first_divergence": len(tokens) if divergence is None else divergence}
        if not result.check.passed:
            result.status, result.reason = "FAILED", result.check.describe()
            return result
        graphs = compiled_graphs()
        _, runs_of = measure_generation(model, prompt, n, settings.runs, warmup=False,
                                        progress=progress, desc=f"{name}: generate")
        if model.opt.compile != "off":
            result.recompiles = compiled_graphs() - graphs
        with torch.no_grad():
            x = reference.check_x
            runs_of["prefill_ms"] = [1e3 * t for t in sample_times(
                lambda: model(x), warmup=1, repeat=settings.prefill_repeat, device=device)]
        result.spread = {k: spread(v) for k, v in runs_of.items()}
        result.tokens_per_s = result.spread["tokens_per_s"]["median"]
        result.decode_ms = result.spread["decode_ms"]["median"] if "decode_ms" in runs_of else None
        result.prefill_ms = result.spread["prefill_ms"]["median"]
        if settings.profile:
            prof = profile_generation(model, prompt, n)
            result.bytes_per_token = prof.bytes_per_token
            result.allocs_per_token = prof.allocs_per_token
            result.time_split = prof.split_percent
            result.time_split_ms = prof.split_ms
        result.gflops, mm_now = matmul_gflops(model.opt, settings.gemm_sizes, device=device,
                                              repeat=settings.gemm_repeat)
        if machine is not None:
            result.roofline = roofline(result, machine, mm_now, decode_weight_bytes(model))
    except CustomOpsUnavailable as exc:  # a custom op that fails only when first used
        result.status, result.reason = "unavailable", str(exc)
    except Exception as exc:
        result.status, result.reason = "error", f"{type(exc).__name__}: {exc}"
    return result


def roofline(result: PhaseResult, machine: MachineLimits, mm_gflops_now: "dict | None" = None,
             weight_bytes: "int | None" = None) -> dict:
    """Decode as a fraction of the bandwidth roofline (the preset's `weight_bytes` read once per
    token at the machine's bandwidth; default the fp32 weights); GEMM as a fraction of torch.mm
    (timed alongside the preset's GEMM when given, else the machine's figure)."""
    weight_bytes = weight_bytes or machine.weight_bytes
    scale = weight_bytes / machine.weight_bytes  # int8 weights: a quarter of the bytes
    out = {"weight_bytes": weight_bytes, "ideal_decode_ms": machine.ideal_decode_ms * scale,
           "ideal_decode_ms_dram": machine.ideal_decode_ms_dram * scale}
    if result.decode_ms:
        out["decode_fraction_of_roofline"] = out["ideal_decode_ms"] / result.decode_ms
        out["decode_gbs"] = weight_bytes / (result.decode_ms * 1e-3) / 1e9  # weights read
    reference_mm = mm_gflops_now or machine.mm_gflops
    for n, g in result.gflops.items():
        if n in reference_mm:
            out[f"gemm_{n}_fraction_of_torch_mm"] = g / reference_mm[n]
    return out

