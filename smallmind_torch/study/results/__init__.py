"""Every result type of the study: plain dataclasses, data only (no measuring, no rendering).

`to_dict()` is what results.json holds: the fields, plus a few derived figures for readers of
the file (DERIVED); `from_dict()` reads it back, so that the report renders from results.json
alone (report/). A StudyResult holds one typed section per part of the study. The types of
two parts live in modules of their own, for their length, and are imported here: the phase
diff's (diff.py) and the weight formats' (formats.py).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from ..data import Data
from ..seed import SEED
from .diff import OpProfile, OpRow, OpStat, PhaseDiff  # noqa: F401  (the phase diff's)
from .formats import FormatAccuracy, FormatQuality, FormatSpeed, QuantizedResult  # noqa: F401
from .speculative import SpeculativeResult, SpeculativeRow, SpeculativeShape  # noqa: F401

@dataclass
class Check(Data):
    """Agreement with the `reference` preset on the same weights (for a lossy weight format:
    reference's forms on the same rounded weights, config.reference_for)."""

    max_abs_diff: float
    tokens_equal: bool
    tolerance: float
    first_mismatch: int | None = None  # index of the first differing generated token
    weights: str = "fp32"              # the weight format both ran on
    DERIVED = ("passed",)

    @property
    def passed(self) -> bool:
        return math.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.tolerance and self.tokens_equal

    def describe(self) -> str:
        if self.passed:
            on = "" if self.weights == "fp32" else f" vs reference on the {self.weights} weights"
            return f"ok (max diff {self.max_abs_diff:.1e}{on})"
        parts = []
        if not (math.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.tolerance):
            parts.append(f"max |logit diff| {self.max_abs_diff:.3g} > {self.tolerance:g}")
        if not self.tokens_equal:
            parts.append(f"greedy tokens differ from reference's (first at token {self.first_mismatch})")
        return "; ".join(parts)


@dataclass
class Profiled(Data):
    """What one profiled generation gives: allocations and the labelled time split."""

    alloc_bytes: int
    alloc_count: int
    total_ms: float                    # profiled time (sum of the root step regions)
    split_ms: dict                     # category -> self time (ms), "other" included
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
    """What a preset's row and an engine's row share: a status and bytes per token."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def mb_per_token(self) -> float | None:
        return None if self.bytes_per_token is None else self.bytes_per_token / 1e6

    def describe_status(self) -> str:
        if self.status == "ok":
            return self.describe_ok()
        return f"{self.status}: {self.reason}" if self.reason else self.status


@dataclass
class PhaseResult(_StatusAndMemory, Data):
    name: str
    status: str                        # "ok" | "FAILED" | "unavailable" | "error"
    reason: str = ""
    phase: str = ""                    # what ran, e.g. "max = fused decode" (phases.resolve)
    opt: dict = field(default_factory=dict)
    check: Check | None = None
    tokens_per_s: float | None = None
    decode_ms: float | None = None
    prefill_ms: float | None = None
    bytes_per_token: float | None = None
    allocs_per_token: float | None = None
    spread: dict = field(default_factory=dict)       # figure -> spread() of its runs
    compile_s: float | None = None     # compiled phases: the first forward + generation
    graphs_compiled: int | None = None  # ... the graphs compiled then
    recompiles: int | None = None      # ... and during the timed runs (must be 0)
    gflops: dict[int, float] = field(default_factory=dict)  # size -> GFLOPS, preset's matmul
    time_split: dict = field(default_factory=dict)   # category -> percent (sums to 100)
    time_split_ms: dict = field(default_factory=dict)
    roofline: dict = field(default_factory=dict)
    # lossy weight formats: against fp32 reference, max_abs_logit_diff on the check input and
    # greedy_agreement (the fraction of equal tokens) and first_divergence of the generation
    accuracy: dict | None = None
    env: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    DERIVED = ("mb_per_token",)

    def describe_ok(self) -> str:
        text = self.check.describe() if self.check else "ok"
        if self.accuracy:
            a = self.accuracy
            text += (f"; vs fp32: max |logit diff| {a['max_abs_logit_diff']:.3g} over the check "
                     f"input, greedy tokens {100 * a['greedy_agreement']:.0f}% equal over the "
                     f"{a.get('tokens', 'generated')} after the study prompt")
        return text


@dataclass
class MachineLimits(Data):
    weight_bytes: int                  # parameter bytes read by one decode step
    bandwidth_weights_gbs: float       # stream read over a buffer the size of the weights
    large_bytes: int
    bandwidth_large_gbs: float         # ... over a buffer larger than the last-level cache
    llc_bytes: int | None
    mm_gflops: dict[int, float]        # size -> torch.mm GFLOPS
    env: dict = field(default_factory=dict)
    spread: dict = field(default_factory=dict)  # figure -> spread() of its samples (best is kept)
    DERIVED = ("mm_peak_gflops", "ideal_decode_ms", "ideal_decode_ms_dram", "disturbed")

    @property
    def disturbed(self) -> list:
        """The figures whose samples differ by more than DISTURBED_RATIO."""
        return [name for name, s in self.spread.items() if s["disturbed"]]

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


# ---- the engines (peers/): one row per engine and thread count -------------------------------

@dataclass
class EngineRow(_StatusAndMemory, Data):
    engine: str                        # registry name: smallmind:max, onnxruntime, hf, ...
    threads: int
    is_peer: bool                      # an engine we measure against (not smallmind)
    status: str = "ok"                 # "ok" | "FAILED" | "not installed" | "error"
    reason: str = ""
    label: str = ""                    # what ran, e.g. "smallmind max = fused decode"
    version: str = ""
    setup: dict = field(default_factory=dict)   # one-time costs in seconds (export_s, ...)
    first_call_s: float | None = None  # the check run (the first call: includes any compile)
    first_mismatch: int | None = None  # first generated token that differs from reference's
    weights: str = "fp32"              # the weight format the engine computes with (int8, int4)
    agreement: float | None = None     # int8, int4: the fraction of its greedy tokens = reference's
    tokens_per_s: dict | None = None   # spread() over the runs: min, median, max, ...
    first_token_ms: dict | None = None
    decode_ms: dict | None = None
    bytes_per_token: float | None = None   # one profiled generation (the study's peers)
    allocs_per_token: float | None = None
    runs: list = field(default_factory=list)    # per run: total_s, first_token_s, decode_s
    counters: dict = field(default_factory=dict)  # hf-compiled: this case's FX graph cache hits, misses
    DERIVED = ("compile_s", "mb_per_token")

    @property
    def compile_s(self) -> float | None:
        """hf-compiled, torchao: the first call's time beyond a steady run's (the compile)."""
        if (not self.engine.startswith(("hf-compiled", "torchao")) or self.first_call_s is None
                or not self.runs):
            return None
        return max(0.0, self.first_call_s - statistics.median(r["total_s"] for r in self.runs))

    def describe_check(self) -> str:
        """"ok", or for a lossy engine how far its tokens agree with fp32 reference's."""
        if self.weights == "fp32" or self.agreement is None:
            return "ok"
        first = "" if self.first_mismatch is None else f", first differs at {self.first_mismatch}"
        return f"{100 * self.agreement:.0f}% of tokens = fp32 reference{first}"

    def describe_ok(self) -> str:
        check = self.describe_check()
        return "ok (greedy tokens = reference)" if check == "ok" else check


@dataclass
class CaseResult(Data):
    """One shape and one prompt of `smallmind peers`: a row per (engine, thread count). Ratios
    are taken inside a case and a thread count, between figures measured in the same run."""

    shape: str
    prompt_len: int
    new_tokens: int
    rows: list[EngineRow] = field(default_factory=list)  # in run order

    @property
    def title(self) -> str:
        return f"{self.shape}, prompt {self.prompt_len}, {self.new_tokens} new tokens"

    def ratios(self) -> dict:
        """{threads: {engine: {"x_best_peer": ..., "x_best_int8_peer": ...,
        "x_best_int4_peer": ..., "first_token_x_onnxruntime": ...}}}; x_best_peer is over the
        best fp32 peer."""
        out = {}
        for threads in sorted({r.threads for r in self.rows}):
            rows = [r for r in self.rows if r.threads == threads and r.ok and r.tokens_per_s]
            best = {fmt: max((r.tokens_per_s["median"] for r in rows
                              if r.is_peer and r.weights == fmt), default=None)
                    for fmt in ("fp32", "int8", "int4")}
            ort = next((r for r in rows if r.engine == "onnxruntime"), None)
            group = {}
            for r in rows:
                ratio = {}
                for fmt, key in (("fp32", "x_best_peer"), ("int8", "x_best_int8_peer"),
                                 ("int4", "x_best_int4_peer")):
                    if best[fmt]:
                        ratio[key] = r.tokens_per_s["median"] / best[fmt]
                if ort is not None and ort.first_token_ms and r.first_token_ms:
                    ratio["first_token_x_onnxruntime"] = (r.first_token_ms["median"]
                                                          / ort.first_token_ms["median"])
                group[r.engine] = ratio
            out[threads] = group
        return out

    def to_dict(self) -> dict:
        return super().to_dict() | {"ratios": {str(k): v for k, v in self.ratios().items()}}


@dataclass
class PeersResult(Data):
    settings: dict
    env: dict
    shapes: dict = field(default_factory=dict)  # name -> model_config, num_parameters, weights
    cases: list[CaseResult] = field(default_factory=list)


# ---- the parts beyond the presets' table -----------------------------------------------------

@dataclass
class WaterfallRow(Data):
    """One step from phase0 to max (measure/waterfall.py)."""

    label: str
    preset: str | None                 # a preset's name, or None for switches on the step above
    opt: dict
    status: str
    reason: str = ""
    tokens_per_s: float | None = None
    ms_per_token: float | None = None
    spread: dict | None = None


@dataclass
class TrainingResult(Data):
    name: str
    status: str                        # "ok" | "unavailable" | "error" | "skipped"
    reason: str = ""
    shape: dict = field(default_factory=dict)
    batch: tuple = ()                  # (batch size, tokens per sequence)
    ms_per_step: float | None = None
    tokens_per_s: float | None = None
    allocs_per_step: float | None = None
    mb_per_step: float | None = None
    time_split: dict = field(default_factory=dict)     # category -> percent
    time_split_ms: dict = field(default_factory=dict)  # category -> ms per step
    spread: dict = field(default_factory=dict)
    DERIVED = ("embedding_backward_percent",)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def embedding_backward_percent(self) -> float | None:
        return self.time_split.get("embedding_backward") if self.time_split else None


@dataclass
class InitResult(Data):
    shape: dict
    form: str
    ms: float
    spread: dict


@dataclass
class ScalingResult(Data):
    name: str
    status: str                                   # "ok" | "unavailable" | "error"
    reason: str = ""
    phase: str = ""
    tokens_per_s_by_batch: dict[int, float] = field(default_factory=dict)  # B -> total tokens/s
    batch_spread: dict[int, dict] = field(default_factory=dict)
    decode_ms_by_position: dict[int, float] = field(default_factory=dict)  # position -> ms

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class TraceResult(Data):
    name: str
    status: str                        # "ok" | "unavailable" | "error"
    reason: str = ""
    phase: str = ""                    # what ran, e.g. "max = fused decode"
    run_dir: str = ""
    trace_files: list = field(default_factory=list)   # TensorBoard traces (*.pt.trace.json)
    chrome_trace: str = ""
    pictures: list = field(default_factory=list)      # the offline views: flame HTML, step and memory PNG
    files: dict = field(default_factory=dict)         # every file written -> what it is, how to open it
    allocations: dict = field(default_factory=dict)   # label -> {"count", "bytes"} per profiled token
    time_split: dict = field(default_factory=dict)    # category -> percent over the active steps
    top_ops: list = field(default_factory=list)       # per op: name, count, self_cpu_ms, ...


# ---- the whole study -------------------------------------------------------------------------

@dataclass
class StudyResult(Data):
    model_config: dict
    num_parameters: int
    settings: dict
    env: dict
    machine: MachineLimits | None
    phases: dict[str, PhaseResult]     # in run order
    peers: dict[str, EngineRow]        # the peers of the main table (HF generate)
    weights: str = "random"
    prompt: str = ""                   # the study's prompt (settings.describe_prompt)
    seed: dict = field(default_factory=lambda: SEED)
    # the parts beyond the presets' table (run.py), empty where not run
    waterfall: list[WaterfallRow] = field(default_factory=list)
    training: dict[str, list[TrainingResult]] = field(default_factory=dict)  # "model", "large"
    init: dict[str, list[InitResult]] = field(default_factory=dict)          # "model", "large"
    scaling: list[ScalingResult] = field(default_factory=list)
    quantized: QuantizedResult | None = None
    speculative: SpeculativeResult | None = None
    engines: PeersResult | None = None
    traces: dict[str, TraceResult] = field(default_factory=dict)
    diffs: list[PhaseDiff] = field(default_factory=list)   # consecutive presets, op by op
    # the `compiled` preset's deployed forms (C++ wrapper, AOTInductor), each run as a preset
    compile: dict[str, PhaseResult] = field(default_factory=dict)
    durations: dict = field(default_factory=dict)   # part -> seconds

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
                    row[f"speedup_vs_{peer_name}"] = r.tokens_per_s / p.tokens_per_s["median"]
                    if p.bytes_per_token and r.bytes_per_token is not None:
                        row[f"memory_vs_{peer_name}"] = r.bytes_per_token / p.bytes_per_token
            out[name] = row
        return out

    def to_dict(self) -> dict:
        return super().to_dict() | {"ratios": self.ratios()}
