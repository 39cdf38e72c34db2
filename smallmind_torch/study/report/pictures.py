"""Pictures of a profiler trace as PNG files (the flame graph is report/flame.py's HTML page):

- `step_timeline(bars, step_ms, path, title)`: one profiled step (a decode step) on a time
  axis, its ops and labels one row per nesting depth, named where the name fits, coloured by
  the profiler label each runs under (`draw_step` is the figure);
- `memory_timeline(allocs, tokens, path, title)`: the allocations over the profiled steps,
  bytes and count accumulated over time and stacked by the label each happens under
  (`draw_memory` is the figure).

The data come from study/protocol/trace_events.py (step_bars, allocations).
"""
from __future__ import annotations

from pathlib import Path

from ...labels import CATEGORIES
from .plots import pyplot, save_figure

MAX_DEPTH = 12        # rows of the step timeline; deeper calls are left out
STEP_WIDTH_IN = 14    # the step timeline's axes are about this wide (inches)
CHAR_IN = 0.055       # width of one character of the bar names (fontsize 7), inches


def label_colours() -> dict:
    """One colour per profiler label, the same in every picture."""
    cmap = pyplot().get_cmap("tab10")
    return {c: cmap(i % 10) for i, c in enumerate(CATEGORIES)}


def _fit(name: str, chars: int) -> str:
    """`name` cut to `chars` characters ("" when not even a few fit)."""
    if chars >= len(name):
        return name
    return name[:chars - 1] + "…" if chars >= 5 else ""


def draw_step(bars: list, step_ms: float, title: str):
    """The step timeline's figure: a bar per op or label, y = nesting depth (whole numbers)."""
    plt = pyplot()
    colour = label_colours()
    depth = min(MAX_DEPTH, max((b.depth for b in bars), default=0) + 1)
    fig, ax = plt.subplots(figsize=(STEP_WIDTH_IN + 2.2, 0.45 * depth + 1.6))
    span = step_ms or max((b.start_ms + b.ms for b in bars), default=1.0)
    for b in bars:
        if b.depth >= depth:
            continue
        ax.barh(b.depth, b.ms, left=b.start_ms, color=colour.get(b.label, "#cccccc"),
                edgecolor="white", lw=0.3)
        name = _fit(b.name.removeprefix("aten::"), int(b.ms / span * STEP_WIDTH_IN / CHAR_IN))
        if name:
            ax.text(b.start_ms + b.ms / 2, b.depth, name, ha="center", va="center", fontsize=7,
                    clip_on=True)
    shown = [c for c in CATEGORIES if any(b.label == c for b in bars)]
    ax.legend([plt.Rectangle((0, 0), 1, 1, color=colour[c]) for c in shown], shown, fontsize=8,
              title="label", title_fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0),
              frameon=False)  # beside the axes, never over a bar
    ax.set_xlim(0, span)
    ax.set_ylim(depth - 0.5, -0.5)
    ax.set_yticks(range(depth))
    ax.set_ylabel("nesting depth")
    ax.set_xlabel(f"ms within the step ({span:.3f} ms under the profiler; ops without aten::)")
    ax.set_title(title, fontsize=10)
    return fig


def step_timeline(bars: list, step_ms: float, path: Path, title: str) -> "str | None":
    if not bars:
        return None
    return save_figure(draw_step(bars, step_ms, title), path)


def draw_memory(allocs: list, tokens: int, title: str):
    """The memory timeline's figure: two panels, MB allocated and allocations, accumulated over
    the profiled steps' time and stacked by label; the title gives both per token."""
    plt = pyplot()
    colour = label_colours()
    allocs = sorted(allocs, key=lambda a: a.ms)
    shown = [c for c in CATEGORIES if any(a.label == c for a in allocs)]
    times = [0.0] + [a.ms for a in allocs]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6.5), sharex=True)
    for ax, size, unit in ((top, lambda a: a.nbytes / 1e6, "MB allocated"),
                           (bottom, lambda a: 1, "allocations")):
        series = []
        for label in shown:
            total, run = 0.0, [0.0]
            for a in allocs:
                total += size(a) if a.label == label else 0
                run.append(total)
            series.append(run)
        if series:
            ax.stackplot(times, series, labels=shown, colors=[colour[c] for c in shown], step="post")
        else:
            ax.text(0.5, 0.5, "no allocation in the profiled steps", ha="center", va="center",
                    transform=ax.transAxes)
        for a, before in zip(allocs[1:], allocs):
            if a.step != before.step:
                ax.axvline(a.ms, color="#555555", lw=0.8, ls="--")
        ax.set_ylabel(f"{unit} (cumulative)")
    if shown:
        top.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, title="label",
                   title_fontsize=8, frameon=False)
    bottom.set_xlabel("ms from the start of the profiled steps (dashed: a new step)")
    count = len(allocs) / tokens
    mb = sum(a.nbytes for a in allocs) / 1e6 / tokens
    top.set_title(f"{title}: {count:,.0f} allocations, {mb:.3g} MB allocated per token "
                  f"({tokens} profiled token{'s' if tokens > 1 else ''})", fontsize=10)
    return fig


def memory_timeline(allocs: list, tokens: int, path: Path, title: str) -> str:
    return save_figure(draw_memory(allocs, tokens, title), path)
