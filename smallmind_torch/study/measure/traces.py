"""Profiler traces per preset, for TensorBoard (torch-tb-profiler) and Chrome / Perfetto.

`write_traces(model, "phase1", logdir="runs")` runs a `torch.profiler.profile` with a schedule
(wait=1, warmup=1, active=2), `record_shapes`, `profile_memory`, `with_flops` and the model's
`record_function` labels, and writes

    runs/phase1/<worker>.<span>.pt.trace.json      tensorboard_trace_handler: one run per preset
    runs/phase1/phase1.chrome_trace.json           the same trace (the handler writes it with
                                                   prof.export_chrome_trace) under a name that
                                                   chrome://tracing / ui.perfetto.dev users find

and, with `pictures`, the views that open with no network: `phase1.flame.html` (an interactive
flame graph of the Python frames, labels and ops, report/flame.py), `phase1.step.png` (one step
on a time axis), `phase1.memory.png` (the allocations by label) and `phase1.stacks.txt` (the
folded call stacks the flame graph is drawn from). `result.files` lists every file written with
what it is and how to open it (FILE_NOTES), which report/terminal.py prints.

so `tensorboard --logdir runs` shows one run per phase (PYTORCH_PROFILER tab). A profiler step
is one token of the generation stream by default (`step="token"`: wait = prefill + first token,
then decode steps), or one whole `generate` call of `tokens` tokens (`step="generate"`).
Phase 0's loops emit ~10^5 events per token at the seed shape, hence the small defaults.

`load_tensorboard_run(run_dir)` parses a written run headless with torch-tb-profiler's own
loader (RunProfileData + RunGenerator, what TensorBoard's plugin runs) and returns its
profiles, whose `views` name the overview, operator, trace and memory views.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from torch._C._profiler import _ExperimentalConfig  # verbose: Python frames in export_stacks
from torch.autograd.profiler_util import EventList

from ...config import OptConfig
from ...labels import CATEGORIES
from ...ops import CustomOpsUnavailable
from ..protocol.profiling import STEP_LABEL, quiet_profiler, split_from_events
from ..protocol.settings import device_of, fixed_prompt
from ..protocol.trace_events import allocations, allocations_by_label, folded_stacks, step_bars
from ..report.flame import clean_stacks, read_folded, write_flame_graph, write_folded
from ..report.pictures import memory_timeline, step_timeline
from ..results import TraceResult

TRACE_SUFFIX = ".pt.trace.json"

# What each file written is and how to open it offline, by the end of its name ({logdir}: the
# TensorBoard log directory); result.files holds these for the files of one run.
FILE_NOTES = {
    "flame.html": "interactive flame graph of the call stacks (Python frames, profiler labels, "
                  "aten:: and smallmind:: ops): hover, click to zoom, search; any browser, offline",
    "step.png": "one profiled step on a time axis, its ops and labels by nesting depth: an image",
    "memory.png": "allocations over the profiled steps by profiler label, bytes and count: an image",
    "stacks.txt": "folded call stacks, one line per stack (frames joined by ';') with its self "
                  "microseconds: the input of flamegraph.pl, speedscope or inferno",
    "memory.html": "the profiler's CUDA memory timeline (export_memory_timeline): any browser",
    "chrome_trace.json": "Chrome trace: chrome://tracing (offline) or https://ui.perfetto.dev "
                         "(loads the file into the page locally, but the page itself needs the network)",
    TRACE_SUFFIX: "TensorBoard run: tensorboard --logdir {logdir} (pip install .[tb]; the "
                  "PYTORCH_PROFILER page loads its chart code from the network in the browser)",
}


def file_note(path: "str | os.PathLike", logdir: "str | os.PathLike" = "runs") -> str:
    """FILE_NOTES' line for a written file ("" for another)."""
    name = str(path)
    return next((note.format(logdir=logdir) for end, note in FILE_NOTES.items()
                 if name.endswith(end)), "")


def _steps(model, prompt, n_steps, step, tokens):
    """A list of callables, one per profiler step."""
    if step == "generate":
        return [lambda: model.generate(prompt, tokens, temperature=0.0) for _ in range(n_steps)]
    if step != "token":
        raise ValueError(f"step must be 'token' or 'generate', got {step!r}")
    stream = iter(model.generate_stream(prompt, n_steps, temperature=0.0))
    return [lambda: next(stream) for _ in range(n_steps)]


def write_traces(model, preset: "str | OptConfig | None", logdir: "str | os.PathLike" = "runs", *,
                 name: "str | None" = None, prompt_len: int = 16, seed: int = 1234,
                 step: str = "token", tokens: int = 8, wait: int = 1, warmup: int = 1,
                 active: int = 2, row_limit: int = 15, sort_by: str = "self_cpu_time_total",
                 pictures: bool = True) -> TraceResult:
    """Profile `preset` on `model` and write its TensorBoard run, Chrome trace and (with
    `pictures`) the offline views under logdir/name (the module's docstring); `result.files`:
    each file with what it is and how to open it; `result.top_ops`: the `row_limit` ops and
    labels first by `sort_by`.
    `preset=None` keeps the model's current phase, else the phase is restored after. Custom-op
    presets that cannot be built give status "unavailable"; `result.phase` says what ran (for
    "max", which candidate)."""
    name = name or (preset if isinstance(preset, str) else "custom")
    result = TraceResult(name, "ok")
    try:
        with model.using(preset) if preset is not None else contextlib.nullcontext():
            result.phase = model.phase.description
            _profile(model, result, Path(logdir), fixed_prompt(
                model.config, prompt_len, seed, device_of(model)), step, tokens,
                (wait, warmup, active), row_limit, sort_by, pictures)
    except CustomOpsUnavailable as exc:
        result.status, result.reason = "unavailable", str(exc)
    return result


def _write_views(result: TraceResult, run_dir: Path, events, tokens: int, cuda_prof=None) -> list:
    """The offline views of the profiled steps' `events` (`tokens` tokens): their paths."""
    name, phase = result.name, result.phase  # phase: what ran, e.g. "max = fused decode"
    step_ms, bars = step_bars(events)
    step_png = step_timeline(bars, step_ms, run_dir / f"{name}.step.png", f"{phase}: one profiled step")
    stacks = write_folded(clean_stacks(folded_stacks(events)), run_dir / f"{name}.stacks.txt")
    per = f"per token over {tokens} profiled tokens" if tokens > 1 else "1 profiled token"
    # drawn from the file as written (whole microseconds): the page and the file agree
    flame = write_flame_graph(read_folded(stacks), run_dir / f"{name}.flame.html",
                              f"{phase}: where the time goes, by call stack ({per})", per=tokens)
    allocs = allocations(events)
    result.allocations = allocations_by_label(allocs, tokens)
    memory = memory_timeline(allocs, tokens, run_dir / f"{name}.memory.png", phase)
    written = [step_png, flame, memory, stacks]
    if cuda_prof is not None:  # the stock timeline shows CUDA memory only
        written.append(str(run_dir / f"{name}.memory.html"))
        cuda_prof.export_memory_timeline(written[-1], device="cuda:0")
    return [p for p in written if p]


def _profile(model, result: TraceResult, logdir: Path, prompt, step, tokens, cycle, row_limit,
             sort_by, pictures) -> None:
    """write_traces of the model's phase, into `result`."""
    from torch.profiler import (ProfilerActivity, profile, record_function, schedule,
                                tensorboard_trace_handler)

    name = result.name
    run_dir = logdir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    for old in run_dir.glob(f"*{TRACE_SUFFIX}*"):  # one trace per run dir: the latest
        old.unlink()
    result.run_dir = str(run_dir)
    chrome = run_dir / f"{name}.chrome_trace.json"
    handler = tensorboard_trace_handler(str(run_dir), worker_name=name)
    split_ms = {c: 0.0 for c in CATEGORIES}
    wait, warmup, active = cycle
    files: list = []

    def ready(prof):
        # The handler writes the trace with prof.export_chrome_trace (kineto saves a result
        # once), so the Chrome/Perfetto copy is that same file.
        handler(prof)
        written = sorted(run_dir.glob(f"*{TRACE_SUFFIX}"), key=lambda p: p.stat().st_mtime)
        if written:
            chrome.unlink(missing_ok=True)
            try:
                os.link(written[-1], chrome)  # phase 0's traces are tens of MB: no second copy
            except OSError:
                shutil.copyfile(written[-1], chrome)
        events = prof.profiler.kineto_results.events()
        _, split = split_from_events(events)
        for k, v in split.items():
            split_ms[k] += v
        if pictures:
            views = _write_views(result, run_dir, events, active * (tokens if step == "generate" else 1),
                                 prof if prompt.device.type == "cuda" else None)
            result.pictures = [p for p in views if not p.endswith(".stacks.txt")]
            files.extend(views)

    activities = [ProfilerActivity.CPU]
    if prompt.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with warnings.catch_warnings(), torch.no_grad(), quiet_profiler():
        warnings.simplefilter("ignore")
        steps = _steps(model, prompt, wait + warmup + active, step, tokens)
        with profile(activities=activities, schedule=schedule(wait=wait, warmup=warmup, active=active),
                     on_trace_ready=ready, record_shapes=True, profile_memory=True,
                     with_flops=True, with_stack=pictures,
                     experimental_config=_ExperimentalConfig(verbose=pictures)) as prof:
            for fn in steps:
                with record_function(STEP_LABEL):
                    fn()
                prof.step()
        result.top_ops = [
            {"name": e.key, "count": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,
             "cpu_total_ms": e.cpu_time_total / 1e3, "flops": e.flops,
             "self_cpu_memory_bytes": e.self_cpu_memory_usage}
            for e in sorted(_op_averages(prof), key=lambda e: -getattr(e, sort_by))[:row_limit]]
    total = sum(split_ms.values())
    result.time_split = {k: (100.0 * v / total if total else 0.0) for k, v in split_ms.items()}
    result.trace_files = sorted(str(p) for p in run_dir.glob(f"*{TRACE_SUFFIX}"))
    result.chrome_trace = str(chrome) if chrome.exists() else ""
    files += [result.chrome_trace, *result.trace_files]
    result.files = {p: file_note(p, logdir) for p in files if p}


def _op_averages(prof) -> EventList:
    """key_averages of the ops and labels, without the Python tracer's frames: with_stack records
    every thread's Python calls, and in Jupyter the kernel's own event loop would top the table."""
    events = prof.events()
    ops = EventList([e for e in events if not e.is_python_function], use_device=events._use_device,
                    profile_memory=events._profile_memory, with_flops=events._with_flops)
    ops._tree_built = True  # the parents and children are the full list's, already linked
    return ops.key_averages()


def validate_trace_json(path: "str | os.PathLike") -> dict:
    """Parse a trace file; raise ValueError unless it is a Chrome trace with events."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list) or not data["traceEvents"]:
        raise ValueError(f"{path}: not a Chrome trace (no traceEvents)")
    return data


def load_tensorboard_run(run_dir: "str | os.PathLike", *, use_loader: bool = False) -> list:
    """Parse one run directory with torch-tb-profiler, headless: the `RunProfile`s TensorBoard
    would show (one per worker/span). Each has `.views` (names: overall, operator, trace,
    memory, ...), `.overview`, `.operation_table_by_name`, `.memory_snapshot`.

    `use_loader=True` goes through the plugin's `RunLoader` (one worker process per trace file,
    as TensorBoard does); the default does the same parse in this process."""
    from torch_tb_profiler import consts

    run_dir = str(run_dir)
    if use_loader:
        from torch_tb_profiler import io as tb_io
        from torch_tb_profiler.profiler.loader import RunLoader

        run = RunLoader(os.path.basename(run_dir.rstrip("/")), run_dir, tb_io.Cache()).load()
        return [p for p in run.get_profiles() if p is not None]
    import tempfile

    from torch_tb_profiler.profiler.data import RunProfileData
    from torch_tb_profiler.profiler.run_generator import RunGenerator

    profiles = []
    spans: dict = {}
    files = []
    for entry in sorted(os.listdir(run_dir)):
        match = consts.WORKER_PATTERN.match(entry)
        if match and not os.path.isdir(os.path.join(run_dir, entry)):
            worker, span = match.group(1), match.group(2)
            files.append((worker, span[1:] if span else None, entry))
            if span:
                spans.setdefault(worker, []).append(span[1:])
    with tempfile.TemporaryDirectory() as cache_dir:
        for worker, span, entry in files:
            span_index = None if span is None else sorted(spans[worker]).index(span) + 1
            data = RunProfileData.parse(worker, span_index, os.path.join(run_dir, entry), cache_dir)
            profiles.append(RunGenerator(worker, span_index, data).generate_run_profile())
    return profiles


def view_names(profile) -> list:
    return [v.name for v in profile.views]
