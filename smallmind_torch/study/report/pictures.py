"""Pictures of a profiler trace that open without a network (a PNG, an SVG, one HTML file):

- `flame_graph(folded, path)`: where the time goes by Python and C++ call stack (the profiler's
  `export_stacks` with `with_stack=True`), drawn as an icicle chart: the root on top, each
  frame as wide as its share of the time. This is where the "other" of the time split shows
  what it is. No maintained flame-graph renderer installs here (flamegraph.pl and inferno are
  not on PyPI or in Debian bookworm), so matplotlib, which the study draws everything with,
  renders it;
- `step_timeline(events, path, title)`: one profiled step (a decode step) on a time axis, one
  row per nesting depth, coloured by the profiler label each event runs under;
- the memory timeline is the profiler's own `export_memory_timeline` (an HTML file with the
  plot inside), written by traces.py.
"""
from __future__ import annotations

from pathlib import Path

from ...labels import CATEGORIES
from .plots import pyplot, save_figure

MIN_SHARE = 0.004     # frames below this share of the total are not drawn


def _frame_name(frame: str) -> str:
    """'torch/nn/modules/module.py(1778):__call_impl' -> 'module.py:_call_impl'."""
    location, _, func = frame.partition(":")
    file = location.rsplit("/", 1)[-1].split("(")[0]
    return f"{file}:{func.lstrip('_') or func}" if func else location


def _tree(folded_lines, focus: str) -> dict:
    root = {"name": "all", "value": 0, "children": {}}
    for line in folded_lines:
        stack, _, value = line.rpartition(" ")
        if not stack or not value.isdigit() or focus not in stack:
            continue
        node, v = root, int(value)
        root["value"] += v
        for frame in stack.split(";"):
            node = node["children"].setdefault(frame, {"name": frame, "value": 0, "children": {}})
            node["value"] += v
    while len(root["children"]) == 1:  # drop the frames every stack shares (the caller's)
        (only,) = root["children"].values()
        root = {**only, "name": "all: " + _frame_name(only["name"])}
    return root


def flame_graph(folded: "str | Path", path: Path, title: str = "",
                focus: str = "generate_stream") -> "str | None":
    """Icicle chart of the folded stacks that pass through a `focus` frame (the generation, not
    the profiler's own work or other threads)."""
    lines = Path(folded).read_text(encoding="utf-8", errors="replace").splitlines()
    root = _tree(lines, focus)
    total = root["value"]
    if total <= 0:
        return None
    plt = pyplot()
    boxes = []

    def place(node, x, depth):
        boxes.append((x, depth, node["value"], node["name"]))
        for child in sorted(node["children"].values(), key=lambda n: -n["value"]):
            if child["value"] / total >= MIN_SHARE:
                place(child, x, depth + 1)
            x += child["value"]

    place(root, 0, 0)
    depth = max(b[1] for b in boxes) + 1
    fig, ax = plt.subplots(figsize=(16, 0.28 * depth + 1.2))
    cmap = plt.get_cmap("YlOrRd")
    for x, d, w, name in boxes:
        ax.add_patch(plt.Rectangle((x / total, d), w / total, 0.95,
                                   color=cmap(0.25 + 0.5 * ((hash(name) % 97) / 97)), lw=0))
        fits = int(230 * w / total)  # characters of fontsize 6 across the box, 16 in wide
        if fits >= 8:
            label = f"{_frame_name(name) if d else name} ({100 * w / total:.0f}%)"
            label = label if len(label) <= fits else label[:fits - 2] + ".."
            ax.text(x / total + 0.002, d + 0.45, label, fontsize=6, va="center", clip_on=True)
    ax.set_xlim(0, 1)
    ax.set_ylim(depth, 0)
    ax.set_yticks([])
    ax.set_xlabel("share of the profiled time (self CPU time of the frames below each)")
    ax.set_title(title or "Where the time goes, by call stack", fontsize=10)
    return save_figure(fig, path)


def step_timeline(events, path: Path, title: str, step_label: str) -> "str | None":
    """The last `step_label` region of `events` (kineto events) on a time axis."""
    roots = [e for e in events if e.name() == step_label]
    if not roots:
        return None
    root = max(roots, key=lambda e: e.start_ns())
    t0, t1, thread = root.start_ns(), root.end_ns(), root.start_thread_id()
    inside = sorted((e for e in events if e.start_thread_id() == thread and t0 <= e.start_ns()
                     and e.end_ns() <= t1 and e is not root and e.name() != "[memory]"
                     and not e.is_python_function()  # ops and labels; the flame graph has the frames
                     and (e.end_ns() - e.start_ns()) >= 0.002 * (t1 - t0)),
                    key=lambda e: (e.start_ns(), -e.end_ns()))
    plt = pyplot()
    cmap = plt.get_cmap("tab10")
    colour = {c: cmap(i % 10) for i, c in enumerate(CATEGORIES)}
    regions = [(e.start_ns(), e.end_ns(), e.name()) for e in inside if e.name() in colour]
    stack, rows = [], []
    for e in inside:
        while stack and stack[-1] <= e.start_ns():
            stack.pop()
        around = [r for r in regions if r[0] <= e.start_ns() and e.end_ns() <= r[1]]
        label = min(around, key=lambda r: r[1] - r[0])[2] if around else "other"
        rows.append((e.start_ns() - t0, e.end_ns() - e.start_ns(), len(stack), e.name(), label))
        stack.append(e.end_ns())
    if not rows:
        return None
    depth = min(12, max(r[2] for r in rows) + 1)
    fig, ax = plt.subplots(figsize=(14, 0.45 * depth + 2.2))
    span = (t1 - t0) / 1e6
    for start, width, d, name, label in rows:
        if d >= depth:
            continue
        ax.barh(d, width / 1e6, left=start / 1e6, color=colour.get(label, "#cccccc"), edgecolor="white", lw=0.3)
        if width / 1e6 > span * 0.06:
            ax.text(start / 1e6 + width / 2e6, d, name.replace("aten::", ""), ha="center", va="center",
                    fontsize=6, clip_on=True)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[c]) for c in CATEGORIES]
    ax.legend(handles, CATEGORIES, fontsize=7, ncol=len(CATEGORIES), loc="upper center",
              bbox_to_anchor=(0.5, -0.35 if depth < 4 else -0.15), frameon=False)
    ax.set_ylim(depth - 0.5, -0.5)
    ax.set_ylabel("nesting depth")
    ax.set_xlabel(f"ms within the step ({span:.3f} ms under the profiler)")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)
