"""What a switch changed, read off the profiler: two phases profiled the same way, diffed op
by op (the idea of Holistic Trace Analysis's TraceDiff, written over the profiler's events).

`profile_ops(model, "phase2")` profiles the decode steps of a greedy generation of the fixed
prompt, per key: every `record_function` label of labels.CATEGORIES and every ATen or custom
op (`aten::mm`, `smallmind::linear_out`, ...), with calls, self time, allocations, bytes and
FLOPs; `diff_profiles(a, b)` lines two profiles up, and `diff_phases(model, "phase1",
"phase2")` does both and can write the differential flame graph (report/flame.py);
`measure_diffs` is the study's part "diffs": each consecutive pair of DIFF_CHAIN.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch._C._profiler import _ExperimentalConfig  # verbose: the events' Python frames

from ...config import OptConfig
from ...labels import CATEGORIES
from ...ops import CustomOpsUnavailable
from ..protocol.profiling import STEP_LABEL, allocations_from_events, quiet_profiler
from ..protocol.settings import device_of, fixed_prompt, progress_over
from ..protocol.trace_events import MEMORY_EVENT, folded_stacks
from ..report.flame import clean_stacks, logical_stacks, write_flame_graph
from ..results import OpProfile, OpRow, OpStat, PhaseDiff


def key_kind(name: str) -> "str | None":
    """"label" for a labels.CATEGORIES region, "op" for an ATen or custom op, else None."""
    if name in CATEGORIES:
        return "label"
    return "op" if "::" in name else None


def add_op_stats(events, ops: dict) -> None:
    """Add one profiler cycle's kineto events to `ops` (key -> OpStat), on the threads of the
    STEP_LABEL regions. Self time is a key's time minus that of the keys right inside it; an
    allocation (a `[memory]` event with nbytes > 0) belongs to the innermost key on the same
    thread whose time range holds it."""
    events = [e for e in events if not e.is_python_function()]  # (their names may not decode)
    threads = {e.start_thread_id() for e in events if e.name() == STEP_LABEL}
    by_thread: dict = {}
    for i, e in enumerate(events):
        if e.start_thread_id() not in threads:
            continue
        name = e.name()
        if name == MEMORY_EVENT:
            if e.nbytes() > 0:  # sorted after a key that starts at the same instant
                by_thread.setdefault(e.start_thread_id(), []).append(
                    (e.start_ns(), 1, 0, i, name, e))
        elif key_kind(name) and e.device_type() == torch.autograd.DeviceType.CPU:
            by_thread.setdefault(e.start_thread_id(), []).append(
                (e.start_ns(), 0, -e.end_ns(), i, name, e))
    for items in by_thread.values():
        open_keys = []  # [end ns, key, self ns] of the keys open at this instant

        def close():
            _, name, self_ns = open_keys.pop()
            ops[name].self_ms += self_ns / 1e6

        for start, is_memory, minus_end, _, name, event in sorted(items):
            while open_keys and (open_keys[-1][0] < start if is_memory else open_keys[-1][0] <= start):
                close()
            if is_memory:
                if open_keys:
                    stat = ops[open_keys[-1][1]]
                    stat.allocs += 1
                    stat.bytes += event.nbytes()
                continue
            ns = -minus_end - start
            stat = ops.setdefault(name, OpStat(key_kind(name)))
            stat.calls += 1
            stat.flops += event.flops()
            if open_keys:
                open_keys[-1][2] -= ns
            open_keys.append([-minus_end, name, ns])
        while open_keys:
            close()


def check_lengths(config, prompt_len: int, tokens: int) -> None:
    """Raise ValueError unless the prompt, the first token and `tokens` profiled decode steps
    fit the model's context (past it the KV cache is filled again inside a step)."""
    if prompt_len < 1 or tokens < 1:
        raise ValueError(f"the prompt length and the profiled tokens must be >= 1, got "
                         f"{prompt_len} and {tokens}")
    if prompt_len + tokens + 1 > config.block_size:
        raise ValueError(f"the prompt ({prompt_len} tokens), the first token and the {tokens} "
                         f"profiled ones must fit the model's block_size ({config.block_size})")


def profile_ops(model, preset: "str | OptConfig", *, prompt_len: int = 16, tokens: int = 8,
                seed: int = 1234, stacks: bool = True, name: "str | None" = None) -> OpProfile:
    """Profile `tokens` decode steps of `preset` (a preset name or an OptConfig; the model's
    phase is restored after) on the fixed prompt of `prompt_len` tokens, greedy. The prefill and
    the first token run before the profiler starts (traces.py's `wait` step): only decode steps
    are profiled, one profiler cycle each, read as it ends (phase 0 emits ~10^5 events per
    token at the seed shape). profile_memory=True, record_shapes=False, with_flops (the ATen
    matmuls' FLOPs), and with `stacks` the call stacks for the flame graph from a second pass
    with with_stack (which slows every Python call, so the figures come from the first):
    `result.stacks`, folded, self microseconds over the profiled steps.

    The phase is not checked against reference here (the study's presets part does that; the
    check runs a full forward at block_size, phase 0's slowest call): `result.generated` holds
    the greedy tokens, so that two phases' can be compared (PhaseDiff.same_tokens). Raises CustomOpsUnavailable where the
    preset's C++ ops cannot be built."""
    check_lengths(model.config, prompt_len, tokens)
    name = name or (preset if isinstance(preset, str) else "custom")
    with model.using(preset):
        prompt = fixed_prompt(model.config, prompt_len, seed, device_of(model))
        result = OpProfile(name, model.phase.description, tokens, prompt_len, 0.0, 0, 0)
        _profile_decode(model, prompt, result, stacks=False)
        if stacks:  # recording the Python stacks slows every Python call: a pass of their own,
            # so that the figures of time come from the pass without them
            with_stacks = OpProfile(name, result.phase, tokens, prompt_len, 0.0, 0, 0)
            _profile_decode(model, prompt, with_stacks, stacks=True)
            result.stacks = with_stacks.stacks
    return result


def _profile_decode(model, prompt, result: OpProfile, stacks: bool) -> None:
    from torch.profiler import ProfilerActivity, profile, record_function, schedule

    folded: dict = {}

    def ready(prof):
        every = prof.profiler.kineto_results.events()
        if stacks:  # the pass for the flame graph: traces.py's stacks (Python frames, labels
            # and ops nested by time), which read the frames' names with care (name_of)
            for stack, us in folded_stacks(every).items():
                folded[stack] = folded.get(stack, 0.0) + us
            return
        # ops, labels and [memory]: with with_stack, a Python frame's event now and then has a
        # name that is not UTF-8 (torch 2.13, profiled cycle after cycle), and reading it raises
        events = [e for e in every if not e.is_python_function()]
        result.total_ms += sum(e.duration_ns() for e in events if e.name() == STEP_LABEL) / 1e6
        nbytes, count = allocations_from_events(events)
        result.alloc_bytes += nbytes
        result.alloc_count += count
        add_op_stats(events, result.ops)

    activities = [ProfilerActivity.CPU]
    if prompt.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with warnings.catch_warnings(), torch.no_grad(), quiet_profiler():
        warnings.simplefilter("ignore")  # "won't be using warmup", "clears events each cycle"
        stream = iter(model.generate_stream(prompt, result.tokens + 1, temperature=0.0))
        next(stream)  # the prefill and the first token: not profiled
        with profile(activities=activities, profile_memory=True, record_shapes=False,
                     with_flops=True, with_stack=stacks,
                     experimental_config=_ExperimentalConfig(verbose=stacks),
                     schedule=schedule(wait=0, warmup=0, active=1), on_trace_ready=ready) as prof:
            for _ in range(result.tokens):
                with record_function(STEP_LABEL):
                    result.generated.append(int(next(stream)[0, 0]))
                prof.step()
    if stacks:
        result.stacks = clean_stacks(folded)


def diff_profiles(a: OpProfile, b: OpProfile) -> PhaseDiff:
    """B against A, per generated token: a row per key in either, largest |self ms delta|
    first (then by name), the totals, and the keys only one side has."""
    rows = []
    for name in sorted(set(a.ops) | set(b.ops)):
        sa, sb = a.ops.get(name), b.ops.get(name)
        per_a = lambda field: a.per_token(getattr(sa, field)) if sa else 0.0
        per_b = lambda field: b.per_token(getattr(sb, field)) if sb else 0.0
        rows.append(OpRow(name, (sa or sb).kind,
                          per_a("calls"), per_b("calls"), per_a("self_ms"), per_b("self_ms"),
                          per_a("allocs"), per_b("allocs"), per_a("bytes"), per_b("bytes"),
                          per_a("flops"), per_b("flops"),
                          "" if sa and sb else ("A" if sa else "B")))
    rows.sort(key=lambda r: (-abs(r.self_ms_delta), r.name))
    return PhaseDiff(
        a.name, b.name, phase_a=a.phase, phase_b=b.phase, tokens_a=a.tokens, tokens_b=b.tokens,
        prompt_len=a.prompt_len, ms_per_token_a=a.per_token(a.total_ms),
        ms_per_token_b=b.per_token(b.total_ms), allocs_per_token_a=a.per_token(a.alloc_count),
        allocs_per_token_b=b.per_token(b.alloc_count), bytes_per_token_a=a.per_token(a.alloc_bytes),
        bytes_per_token_b=b.per_token(b.alloc_bytes), rows=rows,
        only_in_a=[r.name for r in rows if r.only_in == "A"],
        only_in_b=[r.name for r in rows if r.only_in == "B"],
        same_tokens=_same_prefix(a.generated, b.generated))


def _same_prefix(a: list, b: list) -> bool:
    n = min(len(a), len(b))  # the profiled token counts of the two sides may differ
    return a[:n] == b[:n]


def diff_file_stem(a: str, b: str) -> str:
    """"phase2-vs-phase3": the diff's files are <stem>.diff.json and <stem>.diff-flame.html."""
    return f"{a}-vs-{b}"


def write_diff_flame_graph(diff: PhaseDiff, a: OpProfile, b: OpProfile,
                           path: "str | os.PathLike") -> str:
    """The differential flame graph of B against A (per token of B), at `path`; recorded in
    `diff.flame_graph`. Its frames are the profiler labels and ops (flame.logical_stacks: the
    two phases' Python differs, their labels do not)."""
    diff.flame_graph = write_flame_graph(
        logical_stacks(b.stacks), path,
        f"{diff.title}: self time per token by profiler label and op (B against A)",
        baseline=logical_stacks({k: v * b.tokens / a.tokens for k, v in a.stacks.items()}),
        per=b.tokens)
    return diff.flame_graph


def diff_phases(model, a: "str | OptConfig", b: "str | OptConfig", *, prompt_len: int = 16,
                tokens: int = 8, tokens_a: "int | None" = None, seed: int = 1234,
                flame_graph: "str | os.PathLike | None" = None,
                names: "tuple | None" = None) -> PhaseDiff:
    """profile_ops of `a` and `b` (presets or OptConfigs) and their diff_profiles; with
    `flame_graph` (a path), the differential flame graph there too. `tokens_a`: A's profiled
    tokens, when A is slow (phase0); `names`: the two sides' names for OptConfigs. A side whose
    custom ops cannot build gives status "unavailable"."""
    na, nb = names or (a if isinstance(a, str) else "A", b if isinstance(b, str) else "B")
    kw = dict(prompt_len=prompt_len, seed=seed, stacks=flame_graph is not None)
    try:
        pa = profile_ops(model, a, tokens=tokens_a or tokens, name=na, **kw)
        pb = profile_ops(model, b, tokens=tokens, name=nb, **kw)
    except CustomOpsUnavailable as exc:
        return PhaseDiff(na, nb, status="unavailable", reason=str(exc))
    diff = diff_profiles(pa, pb)
    if flame_graph is not None:
        write_diff_flame_graph(diff, pa, pb, flame_graph)
    return diff


# The study's part "diffs": each switch of the story, from the seed's algorithms to max, and
# max's int8 weights; phase0's loops make ~10^5 events per token: it is profiled over fewer.
DIFF_CHAIN = (("phase0", "phase1"), ("phase1", "phase2"), ("phase2", "phase3"), ("phase3", "max"),
              ("max", "max-int8"))
PHASE0_TOKENS = 4


def measure_diffs(model, pairs=DIFF_CHAIN, *, prompt_len: int = 16, tokens: int = 8,
                  phase0_tokens: int = PHASE0_TOKENS, seed: int = 1234,
                  flame_dir: "str | os.PathLike | None" = None, progress: bool = False) -> list:
    """A PhaseDiff per (A, B) of `pairs`, each preset profiled once (profile_ops: `tokens`
    decode steps, phase0 `phase0_tokens`); with `flame_dir`, each pair's differential flame
    graph there (<A>-vs-<B>.diff-flame.html). A pair with a preset whose custom ops cannot be
    built is "unavailable"."""
    profiles: dict = {}
    if flame_dir is not None:
        Path(flame_dir).mkdir(parents=True, exist_ok=True)

    def profiled(name):
        if name not in profiles:
            try:
                profiles[name] = profile_ops(
                    model, name, prompt_len=prompt_len, seed=seed, stacks=flame_dir is not None,
                    tokens=phase0_tokens if name == "phase0" else tokens)
            except CustomOpsUnavailable as exc:
                profiles[name] = exc
        return profiles[name]

    diffs = []
    for a, b in progress_over(list(pairs), "diffs", progress):
        pa, pb = profiled(a), profiled(b)
        failed = next((p for p in (pa, pb) if isinstance(p, Exception)), None)
        if failed is not None:
            diffs.append(PhaseDiff(a, b, status="unavailable", reason=str(failed)))
            continue
        diff = diff_profiles(pa, pb)
        if flame_dir is not None:
            write_diff_flame_graph(diff, pa, pb,
                                   Path(flame_dir) / f"{diff_file_stem(a, b)}.diff-flame.html")
        diffs.append(diff)
    return diffs
