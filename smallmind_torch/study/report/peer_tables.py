"""The tables of the peer engines (`smallmind peers`, the study's engines part): a text table
and a Markdown table per case, from a results.PeersResult.

A case is one shape and one prompt; its rows are one per (engine, thread count). Ratios
(CaseResult.ratios) are taken inside a case and a thread count, between figures measured in
the same run: tokens/s over the best fp32 peer's, the best int8 peer's and the best int4
peer's, first-token time over ONNX Runtime's. An int8 or int4 engine's tokens are not required
to equal fp32 reference's: their agreement is shown.
"""
from __future__ import annotations

from ...machine_load import DISTURBED_RATIO
from ..results import CaseResult, EngineRow, PeersResult

HEADER = ["engine", "weights", "threads", "tokens/s", "min-max", "first token ms", "decode ms",
          "x best fp32 peer", "x best int8 peer", "x best int4 peer", "first token x ORT",
          "one-time", "check"]


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
    """min-max of the runs; "!" when they differ by more than timing.DISTURBED_RATIO (the
    machine was disturbed during them)."""
    if not s:
        return "-"
    return f"{_num(s['min'])}-{_num(s['max'])}{'!' if s['disturbed'] else ''}"


def case_rows(case: CaseResult) -> list:
    ratios = case.ratios()
    rows = []
    for r in case.rows:
        if not r.ok:
            rows.append([_short_label(r), r.weights, str(r.threads), *["-"] * 8, _one_time(r),
                         r.describe_status()])
            continue
        ratio = ratios.get(r.threads, {}).get(r.engine, {})
        tps, first, decode = r.tokens_per_s, r.first_token_ms, r.decode_ms
        x = (lambda key: f"{ratio[key]:.2f}x" if ratio.get(key) is not None else "-")
        rows.append([
            _short_label(r), r.weights, str(r.threads), _num(tps["median"] if tps else None),
            _range(tps), _num(first["median"] if first else None),
            _num(decode["median"] if decode else None),
            x("x_best_peer"), x("x_best_int8_peer"), x("x_best_int4_peer"),
            x("first_token_x_onnxruntime"),
            _one_time(r), r.describe_check()])
    return rows


def format_case(case: CaseResult) -> str:
    rows = [HEADER] + case_rows(case)
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    right = {2, 3, 4, 5, 6, 7, 8, 9, 10}
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
