"""A phase diff (results.PhaseDiff) as tables: `diff_text` for the terminal (A, B and the
change in columns of their own), `diff_markdown` for REPORT.md (the top rows, "A -> B" cells).
Every figure is per generated token."""
from __future__ import annotations

import math

from ..results import PhaseDiff
from .tables import fmt_bytes, md_table, text_table

TINY = 0.0005  # below this a figure prints as ~0, not as 1.89e-05


def num(value: float, signed: bool = False) -> str:
    """A per-token figure for a table: 3 significant digits (none after the point for a whole
    number), thousands separated, never in exponent notation ("~0" for a figure below TINY but
    not zero)."""
    if value is None or not math.isfinite(value):
        return "-"
    sign = "+" if signed and value > 0 else ""
    if value == 0:
        return "0"
    size = abs(value)
    if size < TINY:
        return f"{sign if value > 0 else '-'}~0" if signed else "~0"
    if size >= 100 or float(value).is_integer():  # calls per token are mostly whole
        return f"{sign}{value:,.0f}"
    decimals = max(0, 2 - math.floor(math.log10(size)))
    return f"{sign}{value:.{decimals}f}"


def _ratio(a: float, b: float) -> str:
    return f"{b / a:.2f}x" if a > 0 and b > 0 else "-"


def totals_line(diff: PhaseDiff) -> str:
    """The whole token: time and allocations, A -> B."""
    return (f"per token: {num(diff.ms_per_token_a)} -> {num(diff.ms_per_token_b)} ms under the "
            f"profiler ({num(diff.ms_per_token_delta, True)} ms, "
            f"{_ratio(diff.ms_per_token_a, diff.ms_per_token_b)}); "
            f"{num(diff.allocs_per_token_a)} -> {num(diff.allocs_per_token_b)} allocations, "
            f"{fmt_bytes(diff.bytes_per_token_a)} -> {fmt_bytes(diff.bytes_per_token_b)} allocated")


def only_in_line(diff: PhaseDiff) -> str:
    """"only in phase1: aten::addmm, ...; only in phase2: ...": the keys one side has."""
    def names(keys):
        return ", ".join(keys) if keys else "nothing"
    return f"only in {diff.a}: {names(diff.only_in_a)}; only in {diff.b}: {names(diff.only_in_b)}"


def about_line(diff: PhaseDiff) -> str:
    """What was profiled on each side."""
    tokens = (f"{diff.tokens_a} decode steps" if diff.tokens_a == diff.tokens_b
              else f"{diff.tokens_a} and {diff.tokens_b} decode steps")
    same = {True: "", False: "; the two generated different tokens", None: ""}[diff.same_tokens]
    return (f"{diff.phase_a or diff.a} -> {diff.phase_b or diff.b}: {tokens} after a "
            f"{diff.prompt_len}-token prompt, greedy{same}")


def _only(row, diff: PhaseDiff) -> str:
    return {"A": f"only {diff.a}", "B": f"only {diff.b}"}.get(row.only_in, "")


def diff_rows(diff: PhaseDiff, limit: "int | None" = None) -> tuple:
    """(header, rows) for the terminal: per key, A, B and the change of each figure."""
    header = ["label / op", "kind", "calls A", "calls B", "change", "self ms A", "self ms B",
              "change", "allocs A", "allocs B", "change", "memory A", "memory B", ""]
    rows = [[r.name, r.kind, num(r.calls_a), num(r.calls_b), num(r.calls_delta, True),
             num(r.self_ms_a), num(r.self_ms_b), num(r.self_ms_delta, True),
             num(r.allocs_a), num(r.allocs_b), num(r.allocs_delta, True),
             fmt_bytes(r.bytes_a), fmt_bytes(r.bytes_b), _only(r, diff)]
            for r in diff.rows[:limit]]
    return header, rows


def diff_text(diff: PhaseDiff, limit: "int | None" = 20) -> str:
    """The terminal's diff: what ran, the table (the `limit` largest changes of self time
    first), the totals and the keys only one side has."""
    if not diff.ok:
        return f"{diff.title}: {diff.status}: {diff.reason}"
    shown = len(diff.rows) if limit is None else min(limit, len(diff.rows))
    return "\n".join([
        about_line(diff), "per generated token; A = " + diff.a + ", B = " + diff.b
        + f"; the {shown} of {len(diff.rows)} labels and ops whose self time changed most:",
        text_table(*diff_rows(diff, limit)), totals_line(diff), only_in_line(diff)])


def diff_md_rows(diff: PhaseDiff, limit: int = 10) -> tuple:
    """(header, rows) for REPORT.md: the `limit` largest changes of self time, A -> B cells."""
    header = ["label / op", "kind", "calls", "self ms", "change (ms)", "allocations", "memory", "only in"]
    rows = [[f"`{r.name}`", r.kind, f"{num(r.calls_a)} -> {num(r.calls_b)}",
             f"{num(r.self_ms_a)} -> {num(r.self_ms_b)}", num(r.self_ms_delta, True),
             f"{num(r.allocs_a)} -> {num(r.allocs_b)}",
             f"{fmt_bytes(r.bytes_a)} -> {fmt_bytes(r.bytes_b)}",
             {"A": diff.a, "B": diff.b}.get(r.only_in, "")] for r in diff.rows[:limit]]
    return header, rows


def diff_markdown(diff: PhaseDiff, limit: int = 10) -> str:
    """One pair's part of REPORT.md: what ran, the top rows, the totals, the keys one side has
    and the link to its differential flame graph (a path relative to the report)."""
    if not diff.ok:
        return f"### {diff.a} -> {diff.b}\n\n{diff.status}: {diff.reason}\n"
    lines = [f"### {diff.a} -> {diff.b}", "", about_line(diff) + ".", "",
             md_table(*diff_md_rows(diff, limit)), "", totals_line(diff) + ".", "",
             only_in_line(diff) + "."]
    if diff.flame_graph:
        lines += ["", f"Differential flame graph ({diff.b} against {diff.a}): "
                      f"[{diff.flame_graph}]({diff.flame_graph})"]
    return "\n".join(lines) + "\n"
