"""The result types of the phase diff (measure/diff.py), data only like every result type,
imported by results/__init__.py."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..data import Data


@dataclass
class OpStat(Data):
    """One profiler label or op over a profile's decode steps (totals, not per token)."""

    kind: str                          # "label" (a labels.CATEGORIES region) | "op" (aten::, smallmind::)
    calls: int = 0
    self_ms: float = 0.0               # its time minus that of the labels and ops right inside it
    allocs: int = 0                    # allocations whose innermost label or op it is
    bytes: int = 0
    flops: int = 0                     # the profiler's FLOPs (ATen matmuls only; 0 elsewhere)


@dataclass
class OpProfile(Data):
    """The decode steps of one phase under the profiler, per label and op. `stacks` (folded
    call stacks -> self microseconds, for the flame graph) stays out of to_dict: it is big."""

    name: str
    phase: str                         # what ran (for "max", which candidate)
    tokens: int                        # decode steps profiled
    prompt_len: int
    total_ms: float                    # the profiled steps' time
    alloc_count: int
    alloc_bytes: int
    ops: dict[str, OpStat] = field(default_factory=dict)
    generated: list = field(default_factory=list)   # the greedy token ids of the profiled steps
    stacks: dict = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {k: v for k, v in super().to_dict().items() if k != "stacks"}

    def per_token(self, value: float) -> float:
        return value / self.tokens


@dataclass
class OpRow(Data):
    """One label or op of a phase diff, per generated token in A and in B."""

    name: str
    kind: str                          # "label" | "op"
    calls_a: float = 0.0
    calls_b: float = 0.0
    self_ms_a: float = 0.0
    self_ms_b: float = 0.0
    allocs_a: float = 0.0
    allocs_b: float = 0.0
    bytes_a: float = 0.0
    bytes_b: float = 0.0
    flops_a: float = 0.0
    flops_b: float = 0.0
    only_in: str = ""                  # "A" | "B" | "" (in both)
    DERIVED = ("calls_delta", "self_ms_delta", "allocs_delta", "bytes_delta")

    @property
    def calls_delta(self) -> float:
        return self.calls_b - self.calls_a

    @property
    def self_ms_delta(self) -> float:
        return self.self_ms_b - self.self_ms_a

    @property
    def allocs_delta(self) -> float:
        return self.allocs_b - self.allocs_a

    @property
    def bytes_delta(self) -> float:
        return self.bytes_b - self.bytes_a


@dataclass
class PhaseDiff(Data):
    """Phase B against phase A under the same profiling protocol: a row per label and op in
    either (largest |self ms delta| first), the totals per token, the ops only one side has."""

    a: str
    b: str
    status: str = "ok"                 # "ok" | "unavailable" (a side's custom ops cannot build)
    reason: str = ""
    phase_a: str = ""                  # what ran
    phase_b: str = ""
    tokens_a: int = 0                  # decode steps profiled
    tokens_b: int = 0
    prompt_len: int = 0
    ms_per_token_a: float = 0.0
    ms_per_token_b: float = 0.0
    allocs_per_token_a: float = 0.0
    allocs_per_token_b: float = 0.0
    bytes_per_token_a: float = 0.0
    bytes_per_token_b: float = 0.0
    rows: list[OpRow] = field(default_factory=list)
    only_in_a: list = field(default_factory=list)
    only_in_b: list = field(default_factory=list)
    same_tokens: bool | None = None    # both generated the same greedy tokens
    flame_graph: str = ""              # the differential flame graph (HTML), where written
    DERIVED = ("ms_per_token_delta", "allocs_per_token_delta")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def title(self) -> str:
        return f"{self.a} -> {self.b}"

    @property
    def ms_per_token_delta(self) -> float:
        return self.ms_per_token_b - self.ms_per_token_a

    @property
    def allocs_per_token_delta(self) -> float:
        return self.allocs_per_token_b - self.allocs_per_token_a
