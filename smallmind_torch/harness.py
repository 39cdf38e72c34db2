"""The study's measurements, per preset, exactly as STUDY.md's protocol describes them.

For one model (one set of weights) and each preset in `PHASES` (or any OptConfig):

- correctness first: max |logits - reference logits| on a fixed input, and the greedy tokens
  of the 50-token run against reference's. A preset that disagrees is reported FAILED and
  is not benchmarked; a preset whose custom ops cannot be built is reported unavailable;
- tokens/s: greedy generation of `new_tokens` after a fixed prompt, batch 1, `runs` runs after
  one warm-up run (the warm-up run is the correctness run); median; prefill included;
- decode step: median of the time between two consecutive tokens of the generation stream
  (one new-token forward + argmax: `decode_one_token` with a KV cache, a full forward over the
  prefix without);
- prefill: median time of one full forward at T = block_size;
- memory / token: `[memory]` events with `nbytes() > 0` in `prof.profiler.kineto_results.events()`
  of a `profile_memory=True` profile over the whole generation, divided by `new_tokens`;
- time split: share of the profiled generation time in each `record_function` label
  (labels.CATEGORIES), self time excluding nested labels; "other" = total - labelled;
- matmul GFLOPS at 128/256/512 with the preset's matmul form;
- machine limits measured in the same run (bandwidth, torch.mm) and the roofline fractions;
- the Hugging Face `GPT2LMHeadModel.generate` peer on the same weights, same protocol.

Everything is keyword-configurable (`BenchSettings`) so that tests run on tiny shapes. Results
are dataclasses with `to_dict()`. Import from notebooks: `from smallmind_torch import harness`.
"""
from __future__ import annotations

import contextlib
import math
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator

import torch

from .config import PHASES, OptConfig, resolve_phase
from .labels import CATEGORIES
from .machine import environment, last_level_cache_bytes, memory_bandwidth_gbs, mm_gflops
from .timing import device_sync, gflops, median_time

# STUDY.md: the seed's (SmallMind, C#/.NET) figures, shown beside ours in every table.
SEED = {
    "baseline": {"tokens_per_s": 6.2, "mb_per_token": 46.9, "prefill_ms": 48.0,
                 "gflops_512": 16.1, "gc_gen0_per_50_tokens": 450},
    "phase1_target": {"tokens_per_s": (27, 31), "mb_per_token": (8, 12), "prefill_ms": (12, 15),
                      "gc_gen0_per_50_tokens": 50},
    "final_target": {"tokens_per_s": (70, 117), "mb_per_token": (3, 5), "prefill_ms": (4, 6),
                     "gflops_512": (27, 34), "gc_gen0_per_50_tokens": 10},
}

STEP_LABEL = "smallmind.step"  # root record_function around each profiled step


@dataclass(frozen=True)
class BenchSettings:
    """Every knob of the protocol; the defaults are STUDY.md's."""

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

    def __post_init__(self):
        for name in ("new_tokens", "runs", "prompt_len", "prefill_repeat", "gemm_repeat"):
            if getattr(self, name) < 1:
                raise ValueError(f"BenchSettings.{name} must be >= 1")
        object.__setattr__(self, "gemm_sizes", tuple(int(n) for n in self.gemm_sizes))
        object.__setattr__(self, "peak_mm_sizes", tuple(int(n) for n in self.peak_mm_sizes))

    @classmethod
    def tiny(cls, **overrides) -> "BenchSettings":
        """A few tokens, small GEMMs and buffers: seconds, for tests and smoke runs."""
        base = dict(new_tokens=6, runs=2, prompt_len=4, prefill_repeat=1, gemm_sizes=(32, 64),
                    gemm_repeat=1, peak_mm_sizes=(32, 64), bandwidth_large_bytes=8 * 2**20)
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        return asdict(self)


# ---- results --------------------------------------------------------------------------------

@dataclass
class Check:
    """Agreement with the `reference` preset on the same weights."""

    max_abs_diff: float
    tokens_equal: bool
    tolerance: float
    first_mismatch: "int | None" = None  # index of the first differing generated token

    @property
    def passed(self) -> bool:
        return math.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.tolerance and self.tokens_equal

    def describe(self) -> str:
        if self.passed:
            return f"ok (max diff {self.max_abs_diff:.1e})"
        parts = []
        if not (math.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.tolerance):
            parts.append(f"max |logit diff| {self.max_abs_diff:.3g} > {self.tolerance:g}")
        if not self.tokens_equal:
            parts.append(f"greedy tokens differ from reference's (first at token {self.first_mismatch})")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@dataclass
class Profiled:
    """What one profiled generation gives: allocations and the labelled time split."""

    alloc_bytes: int
    alloc_count: int
    total_ms: float                      # profiled time (sum of the root step regions)
    split_ms: dict                       # category -> self time (ms), "other" included
    n_tokens: int

    @property
    def bytes_per_token(self) -> float:
        return self.alloc_bytes / self.n_tokens

    @property
    def allocs_per_token(self) -> float:
        return self.alloc_count / self.n_tokens

    @property
    def split_percent(self) -> dict:
        total = sum(self.split_ms.values())
        return {k: (100.0 * v / total if total > 0 else 0.0) for k, v in self.split_ms.items()}


class _StatusAndMemory:
    """What a preset's row and the peer's row share: a status and bytes per token."""

    status: str
    bytes_per_token: "float | None"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def mb_per_token(self) -> "float | None":
        return None if self.bytes_per_token is None else self.bytes_per_token / 1e6


@dataclass
class PhaseResult(_StatusAndMemory):
    name: str
    status: str                          # "ok" | "FAILED" | "unavailable" | "error"
    reason: str = ""
    opt: dict = field(default_factory=dict)
    check: "Check | None" = None
    tokens_per_s: "float | None" = None
    decode_ms: "float | None" = None
    prefill_ms: "float | None" = None
    bytes_per_token: "float | None" = None
    allocs_per_token: "float | None" = None
    gflops: dict = field(default_factory=dict)       # size -> GFLOPS with the preset's matmul
    time_split: dict = field(default_factory=dict)   # category -> percent (sums to 100)
    time_split_ms: dict = field(default_factory=dict)
    roofline: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def describe_status(self) -> str:
        if self.status == "ok":
            return self.check.describe() if self.check else "ok"
        return f"{self.status}: {self.reason}" if self.reason else self.status

    def to_dict(self) -> dict:
        d = asdict(self)
        d["check"] = self.check.to_dict() if self.check else None
        d["mb_per_token"] = self.mb_per_token
        d["gflops"] = {str(k): v for k, v in self.gflops.items()}
        return d


@dataclass
class PeerResult(_StatusAndMemory):
    name: str
    status: str                          # "ok" | "FAILED" | "not installed" | "error"
    reason: str = ""
    tokens_per_s: "float | None" = None
    decode_ms: "float | None" = None
    bytes_per_token: "float | None" = None
    allocs_per_token: "float | None" = None
    tokens_equal: "bool | None" = None
    env: dict = field(default_factory=dict)

    def describe_status(self) -> str:
        if self.status == "ok":
            return "ok (greedy tokens = reference)"
        return f"{self.status}: {self.reason}" if self.reason else self.status

    def to_dict(self) -> dict:
        return {**asdict(self), "mb_per_token": self.mb_per_token}


@dataclass
class MachineLimits:
    weight_bytes: int                    # parameter bytes read by one decode step
    bandwidth_weights_gbs: float         # stream read over a buffer the size of the weights
    large_bytes: int
    bandwidth_large_gbs: float           # ... over a buffer larger than the last-level cache
    llc_bytes: "int | None"
    mm_gflops: dict                      # size -> torch.mm GFLOPS
    env: dict = field(default_factory=dict)

    @property
    def mm_peak_gflops(self) -> float:
        return max(self.mm_gflops.values())

    @property
    def ideal_decode_ms(self) -> float:
        """Weights read once per token at the weights-sized buffer's bandwidth."""
        return self.weight_bytes / (self.bandwidth_weights_gbs * 1e9) * 1e3

    @property
    def ideal_decode_ms_dram(self) -> float:
        return self.weight_bytes / (self.bandwidth_large_gbs * 1e9) * 1e3

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mm_gflops"] = {str(k): v for k, v in self.mm_gflops.items()}
        d.update(mm_peak_gflops=self.mm_peak_gflops, ideal_decode_ms=self.ideal_decode_ms,
                 ideal_decode_ms_dram=self.ideal_decode_ms_dram)
        return d


@dataclass
class StudyResult:
    model_config: dict
    num_parameters: int
    settings: dict
    env: dict
    machine: "MachineLimits | None"
    phases: dict                         # name -> PhaseResult (in run order)
    peers: dict                          # name -> PeerResult
    weights: str = "random"
    seed: dict = field(default_factory=lambda: SEED)

    def ratios(self) -> dict:
        """Per preset: tokens/s speed-up vs phase0 and vs each peer; memory/token vs each peer."""
        out = {}
        base = self.phases.get("phase0")
        for name, r in self.phases.items():
            if not r.ok:
                continue
            row = {}
            if base is not None and base.ok and base.tokens_per_s:
                row["speedup_vs_phase0"] = r.tokens_per_s / base.tokens_per_s
            row["speedup_vs_seed_baseline"] = r.tokens_per_s / SEED["baseline"]["tokens_per_s"]
            for peer_name, p in self.peers.items():
                if p.ok and p.tokens_per_s:
                    row[f"speedup_vs_{peer_name}"] = r.tokens_per_s / p.tokens_per_s
                    if p.bytes_per_token and r.bytes_per_token is not None:
                        row[f"memory_vs_{peer_name}"] = r.bytes_per_token / p.bytes_per_token
            out[name] = row
        return out

    def to_dict(self) -> dict:
        return {
            "model_config": self.model_config, "num_parameters": self.num_parameters,
            "weights": self.weights, "settings": self.settings, "env": self.env,
            "machine": self.machine.to_dict() if self.machine else None,
            "phases": {k: v.to_dict() for k, v in self.phases.items()},
            "peers": {k: v.to_dict() for k, v in self.peers.items()},
            "ratios": self.ratios(), "seed": self.seed,
        }


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
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return contextlib.nullcontext(None)
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, unit="run")


def measure_generation(model, prompt, new_tokens: int, runs: int, *, warmup: bool = True,
                       progress=False, desc="generate"):
    """Warm-up run (returned tokens; None with warmup=False) + `runs` timed runs: (tokens,
    tokens/s median, decode-step median seconds or None when new_tokens < 2)."""
    tokens = None
    with _progress(runs + int(warmup), desc, progress) as bar:
        if warmup:
            tokens, _, _ = timed_stream(model, prompt, new_tokens)
            if bar is not None:
                bar.update()
        totals, steps = [], []
        for _ in range(runs):
            _, total, intervals = timed_stream(model, prompt, new_tokens)
            totals.append(total)
            steps.extend(intervals[1:])
            if bar is not None:
                bar.update()
    tps = new_tokens / statistics.median(totals)
    return tokens, tps, (statistics.median(steps) if steps else None)


# ---- profiled generation: allocations and time split -----------------------------------------

def _label_self_ns(events, categories=CATEGORIES) -> tuple:
    """(total ns of the root step regions, {label: self ns excluding nested labels})."""
    roots = [e for e in events if e.name() == STEP_LABEL]
    total = sum(e.end_ns() - e.start_ns() for e in roots)
    threads = {e.start_thread_id() for e in roots}
    labels = sorted(((e.start_ns(), e.end_ns(), e.name()) for e in events
                     if e.name() in categories and e.start_thread_id() in threads),
                    key=lambda t: (t[0], -t[1]))
    self_ns = {}
    stack = []
    for start, end, name in labels:
        while stack and stack[-1][1] <= start:
            stack.pop()
        self_ns[name] = self_ns.get(name, 0) + (end - start)
        if stack:  # nested in another label: not that label's own time
            parent = stack[-1][2]
            self_ns[parent] = self_ns.get(parent, 0) - (end - start)
        stack.append((start, end, name))
    return total, self_ns


def split_from_events(events) -> tuple:
    """(total ms, {category: ms}) with "other" = total - labelled; every category present."""
    total_ns, self_ns = _label_self_ns(events)
    split = {c: 0.0 for c in CATEGORIES}
    labelled = 0
    for name, ns in self_ns.items():
        if name != "other":
            split[name] = ns / 1e6
            labelled += ns
    split["other"] = max(0.0, (total_ns - labelled) / 1e6)
    return total_ns / 1e6, split


def allocations_from_events(events) -> tuple:
    """(bytes, count) of the allocations: `[memory]` events with positive nbytes."""
    nbytes = count = 0
    for e in events:
        if e.name() == "[memory]":
            n = e.nbytes()
            if n > 0:
                nbytes += n
                count += 1
    return nbytes, count


def profile_steps(steps: Iterator, n_tokens: int, *, record_shapes=False) -> Profiled:
    """Run the iterator `steps` to its end under the profiler (profile_memory=True), each
    `next()` in a `smallmind.step` region. The profile is cut into one cycle per step and each
    cycle is read and dropped as it ends, so that millions of events (phase 0's loops) never
    accumulate in memory."""
    from torch.profiler import ProfilerActivity, profile, record_function, schedule

    acc = {"bytes": 0, "count": 0, "total": 0.0, "split": {c: 0.0 for c in CATEGORIES}}

    def ready(prof):
        events = prof.profiler.kineto_results.events()
        nbytes, count = allocations_from_events(events)
        total, split = split_from_events(events)
        acc["bytes"] += nbytes
        acc["count"] += count
        acc["total"] += total
        for k, v in split.items():
            acc["split"][k] += v

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "won't be using warmup", "clears events each cycle"
        with profile(activities=activities, profile_memory=True, record_shapes=record_shapes,
                     schedule=schedule(wait=0, warmup=0, active=1), on_trace_ready=ready) as prof:
            done = False
            while not done:
                with record_function(STEP_LABEL):
                    done = next(steps, StopIteration) is StopIteration
                prof.step()
    return Profiled(acc["bytes"], acc["count"], acc["total"], acc["split"], n_tokens)


def profile_generation(model, prompt, new_tokens: int) -> Profiled:
    """Allocations and time split of one greedy generation of `new_tokens` (prefill included)."""
    with torch.no_grad():
        return profile_steps(iter(model.generate_stream(prompt, new_tokens, temperature=0.0)), new_tokens)


# ---- GEMM ------------------------------------------------------------------------------------

def matmul_gflops(opt: OptConfig, sizes=(128, 256, 512), *, device="cpu", repeat=5) -> tuple:
    """({n: GFLOPS of `LINEAR[opt.matmul](a, w, None)`}, {n: GFLOPS of torch.mm}) on square
    n x n matrices. The two are timed alternately, so that their ratio compares them under
    the same machine state (on a shared machine the rate drifts from second to second)."""
    from .forms import LINEAR

    linear = LINEAR[opt.matmul]
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

def measure_machine(model=None, settings: BenchSettings = BenchSettings(), *, device=None) -> MachineLimits:
    device = torch.device(device) if device is not None else (_device_of(model) if model is not None else torch.device("cpu"))
    weight_bytes = weight_bytes_per_decode(model) if model is not None else 64 * 2**20
    llc = last_level_cache_bytes()
    large = settings.bandwidth_large_bytes or max(64 * 2**20, 4 * (llc or 0))
    bw_weights = memory_bandwidth_gbs(weight_bytes, device=device)
    bw_large = memory_bandwidth_gbs(large, device=device)
    mm = {n: mm_gflops(n, device=device, repeat=settings.gemm_repeat)
          for n in sorted(set(settings.peak_mm_sizes) | set(settings.gemm_sizes))}
    return MachineLimits(weight_bytes, bw_weights, large, bw_large, llc, mm, environment(device))


# ---- one preset --------------------------------------------------------------------------------

class ReferenceRun:
    """What every preset is checked against: reference logits on `check_input` and the greedy
    tokens of the benchmark's generation, computed once per model (its weights)."""

    def __init__(self, model, settings: BenchSettings = BenchSettings(), prompt=None):
        device = _device_of(model)
        self.settings = settings
        if prompt is None:
            prompt = fixed_prompt(model.config, settings.prompt_len, settings.seed, device)
        self.prompt = prompt.to(device).view(1, -1)[:, -model.config.block_size:]
        self.check_x = check_input(model.config, settings.seed, device)
        previous = model.opt
        model.set_phase("reference")
        try:
            with torch.no_grad():
                self.logits = model(self.check_x).float().cpu()
                self.tokens = model.generate(self.prompt, settings.new_tokens, temperature=0.0)[
                    0, self.prompt.size(1):].cpu()
        finally:
            model.set_phase(previous)


def _first_mismatch(a, b) -> "int | None":
    n = min(len(a), len(b))
    diff = (a[:n] != b[:n]).nonzero()
    if len(diff):
        return int(diff[0])
    return None if len(a) == len(b) else n


def _custom_ops_unavailable_error():
    try:
        from .ops import CustomOpsUnavailable

        return CustomOpsUnavailable
    except Exception:  # pragma: no cover - ops package missing entirely
        return ()


def measure_preset(model, preset: "str | OptConfig", settings: BenchSettings = BenchSettings(), *,
                   reference: "ReferenceRun | None" = None, machine: "MachineLimits | None" = None,
                   name: "str | None" = None, progress: bool = False) -> PhaseResult:
    """All figures of one preset on `model`'s weights. The model is left in that preset."""
    name = name or (preset if isinstance(preset, str) else "custom")
    device = _device_of(model)
    env = environment(device)
    try:
        opt = resolve_phase(preset)
    except ValueError as exc:
        return PhaseResult(name, "error", str(exc), env=env, settings=settings.to_dict())
    result = PhaseResult(name, "ok", opt=asdict(opt), env=env, settings=settings.to_dict())
    unavailable = _custom_ops_unavailable_error()
    try:
        model.set_phase(opt)
    except unavailable as exc:
        result.status, result.reason = "unavailable", str(exc)
        return result
    reference = reference or ReferenceRun(model, settings)
    prompt, n = reference.prompt, settings.new_tokens

    try:
        # correctness first: logits on the fixed input, then the warm-up run's greedy tokens
        with torch.no_grad():
            logits = model(reference.check_x).float().cpu()
        max_diff = float((logits - reference.logits).abs().max())
        tokens, _, _ = timed_stream(model, prompt, n)  # the protocol's warm-up run
        mismatch = _first_mismatch(tokens, reference.tokens)
        result.check = Check(max_diff, mismatch is None, settings.tolerance, mismatch)
        if not result.check.passed:
            result.status, result.reason = "FAILED", result.check.describe()
            return result
        _, tps, decode_s = measure_generation(model, prompt, n, settings.runs, warmup=False,
                                              progress=progress, desc=f"{name}: generate")
        result.tokens_per_s = tps
        result.decode_ms = None if decode_s is None else decode_s * 1e3

        with torch.no_grad():
            x = reference.check_x
            result.prefill_ms = median_time(lambda: model(x), warmup=1, repeat=settings.prefill_repeat,
                                            device=device) * 1e3
        if settings.profile:
            prof = profile_generation(model, prompt, n)
            result.bytes_per_token = prof.bytes_per_token
            result.allocs_per_token = prof.allocs_per_token
            result.time_split = prof.split_percent
            result.time_split_ms = prof.split_ms
        result.gflops, mm_now = matmul_gflops(opt, settings.gemm_sizes, device=device,
                                              repeat=settings.gemm_repeat)
        if machine is not None:
            result.roofline = roofline(result, machine, mm_now)
    except unavailable as exc:  # a custom op that fails only when first used
        result.status, result.reason = "unavailable", str(exc)
    except Exception as exc:
        result.status, result.reason = "error", f"{type(exc).__name__}: {exc}"
    return result


def roofline(result: PhaseResult, machine: MachineLimits, mm_gflops_now: "dict | None" = None) -> dict:
    """Decode as a fraction of the bandwidth roofline; GEMM as a fraction of torch.mm (timed
    alongside the preset's GEMM when given, else the machine's figure)."""
    out = {"ideal_decode_ms": machine.ideal_decode_ms, "ideal_decode_ms_dram": machine.ideal_decode_ms_dram}
    if result.decode_ms:
        out["decode_fraction_of_roofline"] = machine.ideal_decode_ms / result.decode_ms
    reference_mm = mm_gflops_now or machine.mm_gflops
    for n, g in result.gflops.items():
        if n in reference_mm:
            out[f"gemm_{n}_fraction_of_torch_mm"] = g / reference_mm[n]
    return out


# ---- the Hugging Face peer ---------------------------------------------------------------------

class _TimingStreamer:
    """A transformers streamer that stamps each new token (put() is called once with the prompt,
    then once per generated token)."""

    def __init__(self, device):
        self.device = device
        self.stamps = []

    def put(self, value):
        device_sync(self.device)
        self.stamps.append(time.perf_counter())

    def end(self):
        pass


def measure_hf(model, settings: BenchSettings = BenchSettings(), *,
               reference: "ReferenceRun | None" = None, progress: bool = False) -> PeerResult:
    """`GPT2LMHeadModel.generate` on the same weights (`model.to_hf()`), greedy, its KV cache."""
    device = _device_of(model)
    env = environment(device)
    try:
        import transformers  # noqa: F401
    except ImportError:
        return PeerResult("hf", "not installed", "transformers is not installed (pip install "
                          "'smallmind-torch[hf]')", env=env)
    try:
        reference = reference or ReferenceRun(model, settings)
        hf = model.to_hf().to(device).eval()
        hf.generation_config.eos_token_id = None  # never stop early: exactly n tokens, like ours
        prompt, n = reference.prompt, settings.new_tokens
        mask = torch.ones_like(prompt)

        def generate(streamer=None):
            with torch.no_grad():
                return hf.generate(prompt, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                   do_sample=False, pad_token_id=0, streamer=streamer)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokens = generate()[0, prompt.size(1):].cpu()  # warm-up + correctness
            equal = _first_mismatch(tokens, reference.tokens) is None
            result = PeerResult("hf", "ok", tokens_equal=equal, env=env)
            if not equal:
                result.status = "FAILED"
                result.reason = "greedy tokens differ from reference's"
                return result
            totals, steps = [], []
            with _progress(settings.runs, "hf: generate", progress) as bar:
                for _ in range(settings.runs):
                    streamer = _TimingStreamer(device)
                    device_sync(device)
                    start = time.perf_counter()
                    generate(streamer)
                    device_sync(device)
                    totals.append(time.perf_counter() - start)
                    # stamps: [prompt, token 1, ..., token n]; decode steps between tokens
                    steps.extend(b - a for a, b in zip(streamer.stamps[1:-1], streamer.stamps[2:]))
                    if bar is not None:
                        bar.update()
            result.tokens_per_s = n / statistics.median(totals)
            result.decode_ms = statistics.median(steps) * 1e3 if steps else None
            if settings.profile:
                def one_step():
                    yield generate()

                prof = profile_steps(one_step(), n)
                result.bytes_per_token = prof.bytes_per_token
                result.allocs_per_token = prof.allocs_per_token
        return result
    except Exception as exc:
        return PeerResult("hf", "error", f"{type(exc).__name__}: {exc}", env=env)


PEERS: dict[str, Callable] = {"hf": measure_hf}


# ---- the whole study ---------------------------------------------------------------------------

def _phase_items(phases) -> list:
    """[(name, str | OptConfig)]: phases may be None (all of PHASES), names, or a dict."""
    if phases is None:
        return [(name, name) for name in PHASES]
    if isinstance(phases, dict):
        return list(phases.items())
    items = []
    for p in phases:
        if isinstance(p, tuple):
            items.append(p)
        elif isinstance(p, OptConfig):
            items.append(("custom", p))
        else:
            items.append((p, p))
    return items


def run_study(model, phases=None, peers: Iterable[str] = ("hf",),
              settings: BenchSettings = BenchSettings(), *, machine: bool = True,
              progress: bool = False, weights: str = "random", prompt=None,
              on_result: "Callable[[object], None] | None" = None) -> StudyResult:
    """Every preset (default: all of PHASES, picked up at call time), the peers and the machine
    limits, on one model's weights, in one run. The model's phase is restored at the end.
    `prompt`: a (1, T) LongTensor instead of the fixed random prompt (e.g. encoded text)."""
    device = _device_of(model)
    previous = model.opt
    items = _phase_items(phases)
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise ValueError(f"unknown peer(s) {unknown}; known: {list(PEERS)}")
    try:
        limits = measure_machine(model, settings) if machine else None
        reference = ReferenceRun(model, settings, prompt)
        results = {}
        try:
            from tqdm.auto import tqdm
            bar = tqdm(items, desc="presets", disable=not progress, unit="preset")
        except ImportError:  # pragma: no cover
            bar = items
        for name, preset in bar:
            if progress and hasattr(bar, "set_postfix_str"):
                bar.set_postfix_str(name)
            r = measure_preset(model, preset, settings, reference=reference, machine=limits,
                               name=name, progress=progress)
            results[name] = r
            if on_result:
                on_result(r)
        peer_results = {}
        for p in peers:
            peer_results[p] = PEERS[p](model, settings, reference=reference, progress=progress)
            if on_result:
                on_result(peer_results[p])
    finally:
        model.set_phase(previous)
    return StudyResult(model_config=asdict(model.config), num_parameters=model.num_parameters(),
                       settings=settings.to_dict(), env=environment(device), machine=limits,
                       phases=results, peers=peer_results, weights=weights)
