"""Profiler events -> the data the offline views of a trace draw (report/flame.py, pictures.py).

All three read the kineto events (`prof.profiler.kineto_results.events()`) of the regions
labelled STEP_LABEL, on the thread that ran them (other threads' Python frames are not the
generation's):

- `folded_stacks(events)`: call stacks of Python frames (`with_stack` with the verbose
  experimental config), the profiler labels and the ops (aten::..., smallmind::...), nested by
  time, with the self time of each. `prof.export_stacks` cannot give this: it writes each op's
  Python stack without the op itself, so no ATen or C++ frame ever shows;
- `allocations(events)`: each allocation (`[memory]` event with positive nbytes) with its time
  and the innermost label (labels.CATEGORIES) around it;
- `step_bars(events)`: the ops and labels of the last step, one bar each, by nesting depth.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...labels import CATEGORIES
from .profiling import STEP_LABEL

MEMORY_EVENT = "[memory]"


def name_of(event) -> str:
    """The event's name; the profiler has been seen to hand back a Python frame's name as bytes
    that are not UTF-8 (name() raises), which must not lose the whole trace."""
    try:
        return event.name()
    except UnicodeDecodeError:
        return "<unreadable name>"


def _steps(events, step_label: str) -> list:
    """The step regions, in time order."""
    return sorted((e for e in events if name_of(e) == step_label), key=lambda e: e.start_ns())


def _on_step_thread(events, roots) -> list:
    """The events with a duration on the steps' thread (CPU), outermost first at equal starts."""
    if not roots:
        return []
    thread = roots[0].start_thread_id()
    return sorted((e for e in events if e.start_thread_id() == thread and name_of(e) != MEMORY_EVENT
                   and e.device_type() == roots[0].device_type()),
                  key=lambda e: (e.start_ns(), -e.end_ns()))


def folded_stacks(events, step_label: str = STEP_LABEL) -> dict:
    """{"step;frame;...;leaf": self microseconds} over the step regions: each event's duration
    less its children's, under the stack of events it lies within. Frames are named as the
    profiler names them (report/flame.py's read_folded cleans them)."""
    roots = _steps(events, step_label)
    spans = [(r.start_ns(), r.end_ns()) for r in roots]
    stacks: dict = {}
    open_: list = []  # [end_ns, name, self_ns]

    def close(frame_stack):
        end, name, self_ns = frame_stack.pop()
        key = ";".join(f[1] for f in frame_stack + [[end, name]])
        stacks[key] = stacks.get(key, 0.0) + max(0, self_ns) / 1e3

    for e in _on_step_thread(events, roots):
        start, end = e.start_ns(), e.end_ns()
        # A frame is closed when the event starts after it ends, or outlasts it: a label
        # (record_function) opens inside the profiler's enter call and closes inside its exit
        # call, so it belongs beside those calls, under the frame that holds it all.
        while open_ and (open_[-1][0] <= start or open_[-1][0] < end):
            close(open_)
        if not open_ and not any(s <= start and end <= t for s, t in spans):
            continue  # outside the steps: the profiler's own calls between them
        if open_:
            open_[-1][2] -= end - start  # not the parent's own time
        open_.append([end, name_of(e), end - start])
    while open_:
        close(open_)
    return stacks


@dataclass
class Allocation:
    ms: float     # from the start of the first step
    label: str    # innermost of labels.CATEGORIES around it; "other" under none
    nbytes: int
    step: int     # which step (0, 1, ...)


def allocations(events, step_label: str = STEP_LABEL) -> list:
    """The allocations inside the step regions, in time order, with their label."""
    roots = _steps(events, step_label)
    if not roots:
        return []
    thread, t0 = roots[0].start_thread_id(), roots[0].start_ns()
    marks = [(e.start_ns(), 1, e.end_ns(), name_of(e), 0) for e in events
             if e.start_thread_id() == thread and name_of(e) in CATEGORIES]
    marks += [(e.start_ns(), 2, 0, "", e.nbytes()) for e in events
              if name_of(e) == MEMORY_EVENT and e.nbytes() > 0 and e.start_thread_id() == thread]
    out, labels = [], []  # labels: [end_ns, name] of the regions open at the current time
    for start, kind, end, name, nbytes in sorted(marks, key=lambda m: (m[0], m[1], -m[2])):
        labels = [r for r in labels if r[0] > start]
        if kind == 1:
            labels.append((end, name))
            continue
        step = next((i for i, r in enumerate(roots) if r.start_ns() <= start <= r.end_ns()), None)
        if step is not None:
            out.append(Allocation((start - t0) / 1e6, labels[-1][1] if labels else "other", nbytes, step))
    return out


def allocations_by_label(allocs: list, per: int = 1) -> dict:
    """{label: {"count": allocations, "bytes": bytes}} per `per` (tokens), every category."""
    table = {c: {"count": 0.0, "bytes": 0.0} for c in CATEGORIES}
    for a in allocs:
        table[a.label]["count"] += 1 / per
        table[a.label]["bytes"] += a.nbytes / per
    return table


@dataclass
class StepBar:
    start_ms: float   # from the step's start
    ms: float
    depth: int        # 0 = directly under the step
    name: str         # the op or label
    label: str        # innermost of labels.CATEGORIES around it (itself if a label); "other"


def step_bars(events, step_label: str = STEP_LABEL, min_share: float = 0.002) -> tuple:
    """(the last step's ms, its ops and labels as bars): the Python frames are left out (the
    flame graph has them), and so is what lasts under `min_share` of the step."""
    roots = _steps(events, step_label)
    if not roots:
        return 0.0, []
    root = roots[-1]
    t0, t1 = root.start_ns(), root.end_ns()
    inside = [e for e in _on_step_thread(events, [root]) if t0 <= e.start_ns() and e.end_ns() <= t1
              and e is not root and name_of(e) != step_label and not e.is_python_function()
              and (e.end_ns() - e.start_ns()) >= min_share * (t1 - t0)]
    bars, open_ = [], []  # open_: (end_ns, label) of the enclosing bars
    for e in inside:
        while open_ and open_[-1][0] <= e.start_ns():
            open_.pop()
        inner = [lab for _, lab in open_ if lab in CATEGORIES]
        label = name_of(e) if name_of(e) in CATEGORIES else (inner[-1] if inner else "other")
        bars.append(StepBar((e.start_ns() - t0) / 1e6, (e.end_ns() - e.start_ns()) / 1e6,
                            len(open_), name_of(e), label))
        open_.append((e.end_ns(), name_of(e)))
    return (t1 - t0) / 1e6, bars
