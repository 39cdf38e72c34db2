"""Profiler events -> the study's figures: allocations and the labelled time split.

- memory / token: `[memory]` events with `nbytes() > 0` in `prof.profiler.kineto_results.events()`
  (`prof.events()` attributes allocations to ops and lists only unattributed frees, so it
  undercounts);
- time split: self time of each `record_function` label (labels.CATEGORIES) inside the root
  step regions, nested labels excluded; "other" = total - labelled.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import warnings
from typing import Iterator

import torch

from ...labels import BACKWARD_OF, CATEGORIES, TRAINING_CATEGORIES
from ..results import Profiled

STEP_LABEL = "smallmind.step"  # root record_function around each profiled step

# What the profiler's C++ side prints on every session, to the process's stderr: Kineto's
# "USDT:... SyncActivityProfilerHandler.cpp:52] profiler_start" / "...:59] profiler_stop"
# (KINETO_LOG_LEVEL and TORCH_CPP_LOG_LEVEL do not silence them), and the allocator's note
# about blocks allocated before profiling started. Nothing else is dropped.
PROFILER_NOISE = re.compile(r"SyncActivityProfilerHandler\.cpp:\d+\] profiler_(start|stop)"
                            r"|Memory block of unknown size was allocated before the profiling")


@contextlib.contextmanager
def quiet_profiler() -> Iterator[None]:
    """Inside the block, the process's stderr (file descriptor 2, where C++ writes) goes
    through a filter that drops PROFILER_NOISE lines and passes every other line on, so real
    errors and warnings still show, in a terminal as in a notebook."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2: nothing to filter
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not PROFILER_NOISE.search(line.decode("utf-8", "replace")):
                    os.write(saved, line)

    thread = threading.Thread(target=forward, name="smallmind-stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        finally:
            os.dup2(saved, 2)  # closes the pipe's last write end: the thread sees EOF
            thread.join(timeout=5)
            os.close(saved)


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


def split_from_events(events, categories=CATEGORIES) -> tuple:
    """(total ms, {category: ms}) with "other" = total - labelled; every category present."""
    total_ns, self_ns = _label_self_ns(events, categories)
    split = {c: 0.0 for c in categories}
    labelled = 0
    for name, ns in self_ns.items():
        if name != "other":
            split[name] = ns / 1e6
            labelled += ns
    split["other"] = max(0.0, (total_ns - labelled) / 1e6)
    return total_ns / 1e6, split


_BACKWARD_NODE = "autograd::engine::evaluate_function: "


def training_split_from_events(events) -> tuple:
    """(total ms, {category: ms}) of a training step over TRAINING_CATEGORIES: the forward
    labels' self time, the loss and the optimizer step as labelled, and each backward node's
    time under the backward of the label its forward op ran in (linked by sequence number:
    a node's `sequence_nr` is its forward op's); "other" is the rest."""
    total_ms, split = split_from_events(events, TRAINING_CATEGORIES)
    labels = [("label", e.start_ns(), e.end_ns(), e.name()) for e in events
              if e.name() in BACKWARD_OF]
    forward_ops = [("op", e.start_ns(), e.end_ns(), e.sequence_nr()) for e in events
                   if e.sequence_nr() >= 0 and not e.name().startswith(_BACKWARD_NODE)
                   and e.name() not in TRAINING_CATEGORIES]
    label_of = {}  # forward sequence number -> the innermost label around its op
    stack = []
    for kind, start, end, what in sorted(labels + forward_ops, key=lambda t: (t[1], -t[2])):
        while stack and stack[-1][1] <= start:
            stack.pop()
        if kind == "label":
            stack.append((start, end, what))
        elif stack:
            label_of.setdefault(what, stack[-1][2])
    backward_ms = 0.0
    for e in events:
        if e.name().startswith(_BACKWARD_NODE):
            ms = (e.end_ns() - e.start_ns()) / 1e6
            split[BACKWARD_OF.get(label_of.get(e.sequence_nr()), "other_backward")] += ms
            backward_ms += ms
    split["other"] = max(0.0, split["other"] - backward_ms)
    return total_ms, split


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


def profile_steps(steps: Iterator, n_tokens: int, *, record_shapes=False,
                  splitter=split_from_events, categories=CATEGORIES) -> Profiled:
    """Run the iterator `steps` to its end under the profiler (profile_memory=True), each
    `next()` in a `smallmind.step` region. The profile is cut into one cycle per step and each
    cycle is read and dropped as it ends, so that millions of events (phase 0's loops) never
    accumulate in memory. `splitter(events) -> (total ms, split)`: the inference split, or
    training_split_from_events with TRAINING_CATEGORIES."""
    from torch.profiler import ProfilerActivity, profile, record_function, schedule

    acc = {"bytes": 0, "count": 0, "total": 0.0, "split": {c: 0.0 for c in categories}}

    def ready(prof):
        events = prof.profiler.kineto_results.events()
        nbytes, count = allocations_from_events(events)
        total, split = splitter(events)
        acc["bytes"] += nbytes
        acc["count"] += count
        acc["total"] += total
        for k, v in split.items():
            acc["split"][k] += v

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with warnings.catch_warnings(), quiet_profiler():
        warnings.simplefilter("ignore")  # "won't be using warmup", "clears events each cycle"
        with profile(activities=activities, profile_memory=True, record_shapes=record_shapes,
                     schedule=schedule(wait=0, warmup=0, active=1), on_trace_ready=ready) as prof:
            done = False
            while not done:
                with record_function(STEP_LABEL):
                    done = next(steps, StopIteration) is StopIteration
                prof.step()
    return Profiled(acc["bytes"], acc["count"], acc["total"], acc["split"], n_tokens)


def profile_call(fn, n_tokens: int, **kwargs) -> Profiled:
    """profile_steps of one step: the call `fn()` (a training step, a peer's generation)."""
    def once():
        yield fn()

    return profile_steps(once(), n_tokens, **kwargs)


def profile_generation(model, prompt, new_tokens: int) -> Profiled:
    """Allocations and time split of one greedy generation of `new_tokens` (prefill included)."""
    with torch.no_grad():
        return profile_steps(iter(model.generate_stream(prompt, new_tokens, temperature=0.0)), new_tokens)

