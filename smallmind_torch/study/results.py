"""The study's result types: plain dataclasses with `to_dict()` (results.json), no measuring."""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

from .seed import SEED

# Runs of one figure whose slowest and fastest differ by more than this factor are flagged as
# disturbed: on a shared machine the figure says more about the neighbours than the code.
DISTURBED_RATIO = 1.5


def spread(values) -> dict:
    """min / median / max of a figure's runs, and whether they differ by more than
    DISTURBED_RATIO."""
    values = sorted(values)
    lo, hi = values[0], values[-1]
    return {"min": lo, "median": statistics.median(values), "max": hi, "runs": len(values),
            "disturbed": bool(lo > 0 and hi / lo > DISTURBED_RATIO)}


@dataclass
class Check:
    """Agreement with the `reference` preset on the same weights (for a lossy weight format:
    reference's forms on the same rounded weights, config.reference_for)."""

    max_abs_diff: float
    tokens_equal: bool
    tolerance: float
    first_mismatch: "int | None" = None  # index of the first differing generated token
    weights: str = "fp32"                # the weight format both ran on

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

    def describe_status(self) -> str:
        if self.status == "ok":
            return self.describe_ok()
        return f"{self.status}: {self.reason}" if self.reason else self.status


@dataclass
class PhaseResult(_StatusAndMemory):
    name: str
    status: str                          # "ok" | "FAILED" | "unavailable" | "error"
    reason: str = ""
    phase: str = ""                      # what ran, e.g. "max = fused decode" (phases.resolve)
    opt: dict = field(default_factory=dict)
    check: "Check | None" = None
    tokens_per_s: "float | None" = None
    decode_ms: "float | None" = None
    prefill_ms: "float | None" = None
    bytes_per_token: "float | None" = None
    allocs_per_token: "float | None" = None
    spread: dict = field(default_factory=dict)       # figure -> spread() of its runs
    compile_s: "float | None" = None     # compiled phases: the first forward + generation
    graphs_compiled: "int | None" = None  # ... the graphs compiled then
    recompiles: "int | None" = None      # ... and during the timed runs (must be 0)
    gflops: dict = field(default_factory=dict)       # size -> GFLOPS with the preset's matmul
    time_split: dict = field(default_factory=dict)   # category -> percent (sums to 100)
    time_split_ms: dict = field(default_factory=dict)
    roofline: dict = field(default_factory=dict)
    # lossy weight formats: against fp32 reference, max_abs_logit_diff on the check input and
    # greedy_agreement (the fraction of equal tokens) and first_divergence of the generation
    accuracy: "dict | None" = None
    env: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def describe_ok(self) -> str:
        text = self.check.describe() if self.check else "ok"
        if self.accuracy:
            a = self.accuracy
            text += (f"; vs fp32: max |logit diff| {a['max_abs_logit_diff']:.3g}, greedy tokens "
                     f"{100 * a['greedy_agreement']:.0f}% equal")
        return text

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
    spread: dict = field(default_factory=dict)       # figure -> spread() of its runs
    env: dict = field(default_factory=dict)

    def describe_ok(self) -> str:
        return "ok (greedy tokens = reference)"

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
    spread: dict = field(default_factory=dict)  # figure -> spread() of its samples (best is kept)

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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mm_gflops"] = {str(k): v for k, v in self.mm_gflops.items()}
        d.update(mm_peak_gflops=self.mm_peak_gflops, ideal_decode_ms=self.ideal_decode_ms,
                 ideal_decode_ms_dram=self.ideal_decode_ms_dram, disturbed=self.disturbed)
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
    # beyond the presets' table (run.extend_study): "waterfall", "training", "init",
    # "scaling", "engines", ... as plain data, and how long each part of the run took
    sections: dict = field(default_factory=dict)
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
            "sections": self.sections, "durations": self.durations,
        }

