"""Result types of `smallmind peers` (peer_bench.py) and their tables: plain dataclasses with
`to_dict()` for results.json, a text table and a Markdown table per case, no measuring.

A case is one shape and one prompt; its rows are one per (engine, thread count). Ratios are
taken inside a case and a thread count, i.e. between figures measured in the same run:
tokens/s over the best fp32 peer's (the best engine that is not smallmind and computes on fp32
weights) and over the best int8 peer's, first-token time over ONNX Runtime's. An int8 engine's
tokens are not required to equal fp32 reference's: their agreement is measured.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

from .engines import engine_weights, is_peer
from .results import DISTURBED_RATIO, spread

STATUSES = ("ok", "FAILED", "not installed", "error")


def _spread(values) -> "dict | None":
    values = [v for v in values if v is not None]
    return spread(values) if values else None


@dataclass
class EngineRow:
    engine: str                          # registry name: smallmind:max, onnxruntime, ...
    threads: int
    status: str = "ok"                   # one of STATUSES
    reason: str = ""
    label: str = ""                      # what ran, e.g. "smallmind max = fused decode"
    version: str = ""
    setup: dict = field(default_factory=dict)   # one-time costs in seconds (export_s, ...)
    first_call_s: "float | None" = None  # the check run (the first call: includes any compile)
    first_mismatch: "int | None" = None  # first generated token that differs from reference's
    weights: str = "fp32"                # the weight format the engine computes with
    agreement: "float | None" = None     # int8: the fraction of its greedy tokens = reference's
    tokens_per_s: "dict | None" = None    # results.spread over the runs: min, median, max, ...
    first_token_ms: "dict | None" = None
    decode_ms: "dict | None" = None
    runs: list = field(default_factory=list)    # per run: total_s, first_token_s, decode_s
    counters: dict = field(default_factory=dict)  # hf-compiled: this case's FX graph cache hits, misses

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def compile_s(self) -> "float | None":
        """hf-compiled: the first call's time beyond a steady run's (the compile)."""
        if not self.engine.startswith("hf-compiled") or self.first_call_s is None or not self.runs:
            return None
        return max(0.0, self.first_call_s - statistics.median(r["total_s"] for r in self.runs))

    def finish(self) -> "EngineRow":
        """Medians, min and max of the timed runs."""
        if self.ok and self.runs:
            self.tokens_per_s = _spread(r["tokens_per_s"] for r in self.runs)
            self.first_token_ms = _spread(r["first_token_s"] * 1e3 for r in self.runs)
            self.decode_ms = _spread(r["decode_s"] * 1e3 if r["decode_s"] is not None else None
                                     for r in self.runs)
        return self

    def describe_status(self) -> str:
        return f"{self.status}: {self.reason}" if self.reason else self.status

    def describe_check(self) -> str:
        """"ok", or for a lossy engine how far its tokens agree with fp32 reference's."""
        if self.weights == "fp32" or self.agreement is None:
            return "ok"
        first = "" if self.first_mismatch is None else f", first differs at {self.first_mismatch}"
        return f"{100 * self.agreement:.0f}% of tokens = fp32 reference{first}"

    def to_dict(self) -> dict:
        return {**asdict(self), "compile_s": self.compile_s}


@dataclass
class CaseResult:
    shape: str
    prompt_len: int
    new_tokens: int
    rows: list = field(default_factory=list)    # EngineRow, in run order

    @property
    def title(self) -> str:
        return f"{self.shape}, prompt {self.prompt_len}, {self.new_tokens} new tokens"

    def ratios(self) -> dict:
        """{threads: {engine: {"x_best_peer": ..., "x_best_int8_peer": ...,
        "first_token_x_onnxruntime": ...}}}; x_best_peer is over the best fp32 peer."""
        out = {}
        for threads in sorted({r.threads for r in self.rows}):
            rows = [r for r in self.rows if r.threads == threads and r.ok and r.tokens_per_s]
            best = {fmt: max((r.tokens_per_s["median"] for r in rows
                              if is_peer(r.engine) and r.weights == fmt), default=None)
                    for fmt in ("fp32", "int8")}
            ort = next((r for r in rows if r.engine == "onnxruntime"), None)
            group = {}
            for r in rows:
                ratio = {}
                for fmt, key in (("fp32", "x_best_peer"), ("int8", "x_best_int8_peer")):
                    if best[fmt]:
                        ratio[key] = r.tokens_per_s["median"] / best[fmt]
                if ort is not None and ort.first_token_ms and r.first_token_ms:
                    ratio["first_token_x_onnxruntime"] = (r.first_token_ms["median"]
                                                          / ort.first_token_ms["median"])
                group[r.engine] = ratio
            out[threads] = group
        return out

    def to_dict(self) -> dict:
        return {"shape": self.shape, "prompt_len": self.prompt_len, "new_tokens": self.new_tokens,
                "rows": [r.to_dict() for r in self.rows],
                "ratios": {str(k): v for k, v in self.ratios().items()}}


@dataclass
class PeersResult:
    settings: dict
    env: dict
    shapes: dict = field(default_factory=dict)  # name -> model_config, num_parameters, weights
    cases: list = field(default_factory=list)   # CaseResult

    def to_dict(self) -> dict:
        return {"settings": self.settings, "env": self.env, "shapes": self.shapes,
                "cases": [c.to_dict() for c in self.cases]}


# ---- tables ----------------------------------------------------------------------------------

HEADER = ["engine", "weights", "threads", "tokens/s", "min-max", "first token ms", "decode ms",
          "x best fp32 peer", "x best int8 peer", "first token x ORT", "one-time", "check"]


def _num(value, digits=None) -> str:
    if value is None:
        return "-"
    if digits is None:
        digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2 if abs(value) >= 1 else 3
    return f"{value:.{digits}f}"


def _short_label(row: EngineRow) -> str:
    label = row.label or row.engine
    return label.split(" (", 1)[0]  # "max = fused decode (cached: ...)" -> "max = fused decode"


def _one_time(row: EngineRow) -> str:
    parts = []
    for key, word in (("export_s", "export"), ("quantize_s", "quantize"), ("convert_s", "convert")):
        if key in row.setup:
            value = row.setup[key]
            parts.append(f"{word} reused" if value is None else f"{word} {value:.1f} s")
    if row.compile_s is not None:
        hits = row.counters.get("fxgraph_cache_hit", 0)
        misses = row.counters.get("fxgraph_cache_miss", 0)
        graphs = f" ({misses} graphs compiled, {hits} from cache)" if hits or misses else ""
        parts.append(f"compile {row.compile_s:.1f} s{graphs}")
    if not parts and "load_s" in row.setup:
        parts.append(f"load {row.setup['load_s']:.1f} s")
    return ", ".join(parts) or "-"


def _range(s: "dict | None") -> str:
    """min-max of the runs; "!" when they differ by more than results.DISTURBED_RATIO (the
    machine was disturbed during them)."""
    if not s:
        return "-"
    return f"{_num(s['min'])}-{_num(s['max'])}{'!' if s['disturbed'] else ''}"


def case_rows(case: CaseResult) -> list:
    ratios = case.ratios()
    rows = []
    for r in case.rows:
        if not r.ok:
            rows.append([_short_label(r), r.weights, str(r.threads), *["-"] * 7, _one_time(r),
                         r.describe_status()])
            continue
        ratio = ratios.get(r.threads, {}).get(r.engine, {})
        tps, first, decode = r.tokens_per_s, r.first_token_ms, r.decode_ms
        x = (lambda key: f"{ratio[key]:.2f}x" if ratio.get(key) is not None else "-")
        rows.append([
            _short_label(r), r.weights, str(r.threads), _num(tps["median"] if tps else None),
            _range(tps), _num(first["median"] if first else None),
            _num(decode["median"] if decode else None),
            x("x_best_peer"), x("x_best_int8_peer"), x("first_token_x_onnxruntime"),
            _one_time(r), r.describe_check()])
    return rows


def format_case(case: CaseResult) -> str:
    rows = [HEADER] + case_rows(case)
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    right = {2, 3, 4, 5, 6, 7, 8, 9}
    lines = [case.title]
    for row in rows:
        lines.append("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
    return "\n".join(lines)


def _shape_line(name: str, info: dict) -> str:
    c = info["model_config"]
    return (f"{name}: {c['n_layer']} layers, {c['n_head']} heads, {c['n_embd']} dims, vocab "
            f"{c['vocab_size']}, context {c['block_size']} ({info['num_parameters'] / 1e6:.1f} M "
            f"params), weights {info['weights']}")


def _settings_line(result: PeersResult) -> str:
    s, env = result.settings, result.env
    return (f"greedy, batch 1, {s['runs']} timed run(s) per engine after a checked warm-up, each "
            f"engine in its own process, alternating run by run; median (min-max, '!': runs "
            f"differ by > {DISTURBED_RATIO}x); prefill in tokens/s. CPU: {env.get('cpu', '?')} ({env.get('cpu_count', '?')} cores, "
            f"{env.get('cpu_capability', '?')}), torch {env.get('torch', '?')}; load average "
            f"(1, 5, 15 min) before {env.get('loadavg_start')}, after {env.get('loadavg_end')}")


def format_text(result: PeersResult) -> str:
    out = [_settings_line(result)]
    out += [_shape_line(n, i) for n, i in result.shapes.items()]
    for case in result.cases:
        out += ["", format_case(case)]
    return "\n".join(out)


def markdown(result: PeersResult) -> str:
    out = [_settings_line(result), ""]
    out += [f"- {_shape_line(n, i)}" for n, i in result.shapes.items()]
    for case in result.cases:
        out += ["", f"**{case.title}**", "", "| " + " | ".join(HEADER) + " |",
                "|" + "---|" * len(HEADER)]
        out += ["| " + " | ".join(row) + " |" for row in case_rows(case)]
    return "\n".join(out) + "\n"
