"""The whole study on one model's weights, part by part: orchestration only (what each part
measures is in measure/, what the report shows in report/). `smallmind study` runs it.

    run_study     the presets' table: every preset, its peers (HF), the machine's limits
    extend_study  the parts beyond it (PARTS: waterfall, diffs, training, init, compile, scaling,
                  quantized, speculative, engines)
    trace_study   profiler traces per preset
    run_steps     any of these in order (STEPS), into a new study or one read from results.json
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..compiled import DEPLOYED_FORMS
from ..config import GPT2_SMALL, PHASES, ModelConfig, OptConfig, presets
from ..model import GPT
from .measure.diff import PHASE0_TOKENS, measure_diffs
from .measure.peer import measure_peer
from .measure.preset import measure_preset, reference_run
from .measure.quality import VALIDATION_SET, validation_stream
from .measure.quantized import RANDOM_PROMPT, measure_formats
from .measure.scaling import measure_scaling
from .measure.speculative import measure_speculative
from .measure.traces import write_traces
from .measure.training import measure_init, measure_training_step
from .measure.waterfall import measure_waterfall
from .peers.bench import DEFAULT_ENGINES, PeerSettings, make_workload, run_peers
from .peers.engines import PEERS
from .protocol.machine import environment, measure_machine
from .protocol.settings import (BenchSettings, describe_prompt, device_of, fixed_prompt,
                                progress_over)
from .results import SpeculativeResult, StudyResult, TrainingResult

PARTS = ("waterfall", "diffs", "training", "init", "compile", "scaling", "quantized",
         "speculative", "engines")
# the wider trained model of the speculative part (`smallmind train --shape wide`, make study)
WIDE_CHECKPOINT = "checkpoints/wide"
STEPS = ("presets", *PARTS, "traces")  # what `smallmind study --only` can run again
ENGINE_SHAPES = ("seed", "gpt2-small")  # of the engines part: the model's, and GPT2_SMALL
# The engines of a tiny (smoke) study: ours at both precisions and one peer, enough to run the
# part and render its tables; every engine is checked on its own by `smallmind peers --tiny`
# (tests/test_engines.py), and a real study runs them all (peers.bench.DEFAULT_ENGINES).
TINY_ENGINES = ("smallmind", "smallmind:max-int8", "onnxruntime")
# phase0's attention writes one score at a time into a tensor that requires grad: autograd
# keeps a copy of the score tensor per write, B x nh x T x T floats times T^2/2 writes per
# layer; at 8 x 128 tokens that is over a hundred GB (a run here was killed at 24 GiB).
PHASE0_TRAINING = ("not measured at this size: phase0's per-element attention keeps one copy of "
                   "the score tensor per (query, key) write for the backward, over 100 GB at "
                   "batch 8 x 128; the tests train it on tiny shapes")


def _phase_items(phases) -> list:
    """[(name, str | OptConfig)]: phases may be None (config.presets()), names, or a dict."""
    if phases is None:
        return [(name, name) for name in presets()]
    if isinstance(phases, dict):
        return list(phases.items())
    items = []
    for p in phases:
        if isinstance(p, tuple):
            items.append(p)
        elif isinstance(p, OptConfig):
            items.append(("custom", p))
        else:
            items.append((p, p))
    return items


def run_study(model, phases=None, peers: Iterable[str] = ("hf",),
              settings: BenchSettings = BenchSettings(), *, machine: bool = True,
              progress: bool = False, weights: str = "random", prompt=None,
              prompt_text: "str | None" = None, peers_in_process: bool = False,
              on_result: "Callable[[object], None] | None" = None) -> StudyResult:
    """Every preset (default: config.presets()), the peers (engines.PEERS; each in its own
    process, or in this one with `peers_in_process`) and the machine limits, on one model's
    weights, in one run; the model's phase is left as it was. `prompt`: a (1, T) LongTensor
    instead of the fixed random prompt (e.g. encoded text, `prompt_text`, which the report names)."""
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise ValueError(f"unknown peer(s) {unknown}; known: {list(PEERS)}")
    start = time.perf_counter()
    limits = measure_machine(model, settings, progress=progress) if machine else None
    reference = reference_run(model, settings, prompt)
    results, peer_rows = {}, {}
    bar = progress_over(_phase_items(phases), "presets", progress)
    for name, preset in bar:
        if progress and hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(name)
        results[name] = measure_preset(model, preset, settings, reference=reference,
                                       machine=limits, name=name, progress=progress)
        if on_result:
            on_result(results[name])
    for name in peers:
        peer_rows[name] = measure_peer(model, name, settings, reference,
                                       in_process=peers_in_process, progress=progress)
        if on_result:
            on_result(peer_rows[name])
    return StudyResult(model_config=asdict(model.config), num_parameters=model.num_parameters(),
                       settings=settings.to_dict(), env=environment(device_of(model)),
                       machine=limits, phases=results, peers=peer_rows, weights=weights,
                       prompt=describe_prompt(prompt, settings, prompt_text), durations={"presets, peers and machine limits": time.perf_counter() - start})


def extend_study(study: StudyResult, model, settings: BenchSettings, parts=PARTS, *,
                 presets_of=None, large: "ModelConfig | None" = GPT2_SMALL, progress=False,
                 prompt=None, prompt_text: "str | None" = None, engine_shapes=("seed",),
                 engine_runs: int = 5, out="results",
                 wide_checkpoint: "str | None" = WIDE_CHECKPOINT) -> StudyResult:
    """Add to `study` (run on `model`) the parts beyond the presets' table, each timed:
    - "waterfall": phase0 to max, switch by switch (waterfall.py);
    - "diffs": each switch of diff.DIFF_CHAIN op by op under the profiler, the differential
      flame graphs in out/traces/diffs/ (paths relative to out) (diff.py);
    - "training": one optimizer step per preset at batch 8 x block_size, and at the `large`
      shape (batch 1 x 256) for reference, phase3 and max (training.py);
    - "init": construction time of each init form at the model's and the `large` shape;
    - "compile": the `compiled` preset's deployed forms (compiled.DEPLOYED_FORMS: Inductor's
      C++ wrapper, an AOTInductor package of the decode step), checked and timed as a preset;
    - "scaling": tokens/s at batch 1, 4, 16 and decode ms by position per preset (scaling.py).
    `presets_of`: part -> preset names (default: the study's presets, minus phase0 for
    scaling: its no-cache line has the reference's shape at 30x the minutes).
    - "quantized": fp32 max against the int8 and bf16 weight formats, speed at 1 and 2 threads
      and accuracy against fp32 reference, the validation loss too when the weights are a
      checkpoint, and each lossy format's scoreboard (quality.py) over the validation split
      (a checkpoint's) or a fixed random stream (quantized.py);
    - "speculative": speculative decoding (ngram and self-speculative drafts, k = 1, 2, 4, 6)
      against fp32 max's greedy decoding on the model, on `wide_checkpoint` (skipped if absent)
      and at the `large` shape (random weights) (speculative.py);
    - "engines": the peer engines on the model's weights and, for `engine_shapes` with
      "gpt2-small", at the large shape, each in its own process (peers/bench.py).
    Tiny settings shrink every part (and skip the large shape)."""
    names = [n for n in study.phases if study.phases[n].ok or study.phases[n].status == "unavailable"]
    chosen = {"training": names, "scaling": [n for n in names if n != "phase0"],
              **(presets_of or {})}
    tiny = settings.smoke
    large = None if tiny else large

    def diffs():
        shutil.rmtree(Path(out) / "traces" / "diffs", ignore_errors=True)  # the study's own
        found = measure_diffs(model, prompt_len=settings.prompt_len, seed=settings.seed,
                              tokens=2 if tiny else 8, phase0_tokens=1 if tiny else PHASE0_TOKENS,
                              flame_dir=Path(out) / "traces" / "diffs", progress=progress)
        for diff in found:
            if diff.flame_graph:
                diff.flame_graph = Path(diff.flame_graph).relative_to(out).as_posix()
        return found

    def training():
        batch = (2, 16) if tiny else (8, model.config.block_size)

        def step(n):
            if n == "phase0" and batch[1] > 32:  # see PHASE0_TRAINING
                return TrainingResult(n, "skipped", PHASE0_TRAINING)
            return measure_training_step(model, n, batch=batch, steps=1 if tiny else 3, name=n)
        out = {"model": [step(n) for n in progress_over(chosen["training"], "training steps", progress)]}
        if large is not None:
            big = GPT(large)
            out["large"] = [measure_training_step(big, n, batch=(1, 256), steps=2, name=n)
                            for n in progress_over(("reference", "phase3", "max"),
                                                   "training steps, GPT-2 small", progress)]
        return out

    def init():
        shapes = {"model": model.config, **({"large": large} if large is not None else {})}
        return {key: [measure_init(config, form, repeat=1 if tiny else 3)
                      for form in ("default", "fast")] for key, config in shapes.items()}

    def compile_forms():
        # the `compiled` preset's row is in the presets' table; these are its deployed forms
        return {f"compile={form}": measure_preset(model, PHASES["compiled"].replace(compile=form),
                                                  settings, name=f"compile={form}")
                for form in progress_over(DEPLOYED_FORMS, "torch.compile forms", progress)}

    def scaling():
        kw = dict(new_tokens=settings.new_tokens, prompt_len=settings.prompt_len,
                  runs=settings.runs, batches=(1, 2) if tiny else (1, 4, 16))
        return [measure_scaling(model, n, name=n, **kw)
                for n in progress_over(chosen["scaling"], "batches and positions", progress)]

    def quantized():
        val, evaluation_set = None, None  # the scoreboard's: a fixed random stream without val
        if study.weights.startswith("checkpoint"):  # trained on the default corpus
            val, evaluation_set = validation_stream(), VALIDATION_SET
        # the greedy agreement after the study's prompt (the main table's figure) and, when that
        # is a text, after the fixed random ids too: two prompts, both named in the report
        random_ids = fixed_prompt(model.config, settings.prompt_len, settings.seed)
        prompts = {"study prompt": (describe_prompt(prompt, settings, prompt_text),
                                    random_ids if prompt is None else prompt)}
        if prompt is not None:
            prompts[RANDOM_PROMPT] = (describe_prompt(None, settings), random_ids)
        return measure_formats(model, val, thread_counts=(1,) if tiny else (1, 2),
                               runs=1 if tiny else 5, new_tokens=settings.new_tokens,
                               val_batches=1 if tiny else 10, batch_size=2 if tiny else 8,
                               prompts=prompts, quality_tokens=val, quality_set=evaluation_set,
                               quality_windows=2 if tiny else None)

    def speculative():
        from ..train.checkpoint import CheckpointError, load_checkpoint

        kw = dict(new_tokens=settings.new_tokens, runs=1 if tiny else 5,
                  k_values=(1, 2) if tiny else (1, 2, 4, 6))
        text = describe_prompt(prompt, settings, prompt_text)
        ids = prompt if prompt is not None else fixed_prompt(model.config, settings.prompt_len,
                                                             settings.seed)
        shapes = [measure_speculative(model, ids, label="seed", weights=study.weights,
                                      prompt_text=text, **kw)]
        skipped = {}
        try:
            wide, tok, _ = (None, None, None) if tiny or not wide_checkpoint else \
                load_checkpoint(wide_checkpoint)
        except CheckpointError as exc:
            wide, skipped["wide"] = None, f"no checkpoint: {exc} (make study trains it)"
        if wide is not None:
            wide_ids = (torch.tensor([tok.encode(prompt_text)]) if prompt_text
                        else fixed_prompt(wide.config, settings.prompt_len, settings.seed))
            shapes.append(measure_speculative(
                wide, wide_ids, label="wide", weights=f"checkpoint {wide_checkpoint}",
                prompt_text=describe_prompt(wide_ids if prompt_text else None, settings,
                                            prompt_text), **kw))
        if large is not None:
            shapes.append(measure_speculative(
                GPT(large), fixed_prompt(large, settings.prompt_len, settings.seed),
                label="gpt2-small", weights="random", prompt_text=describe_prompt(None, settings),
                **kw))
        return SpeculativeResult(shapes, {"runs": kw["runs"], "k_values": list(kw["k_values"]),
                                          "new_tokens": settings.new_tokens}, skipped)

    def engines():
        n = settings.new_tokens
        first = (prompt if prompt is not None else fixed_prompt(model.config, settings.prompt_len,
                                                                  settings.seed))[0].tolist()
        workloads = [make_workload("seed", model, first, new_tokens=n, weights=study.weights)]
        if large is not None and "gpt2-small" in engine_shapes:
            big = GPT(large)
            workloads.append(make_workload(
                "gpt2-small", big, fixed_prompt(large, settings.prompt_len, settings.seed)[0].tolist(),
                new_tokens=n, long_prompt=512, seed=settings.seed, weights="random"))
        return run_peers(workloads, TINY_ENGINES if tiny else DEFAULT_ENGINES, PeerSettings(
            new_tokens=n, runs=1 if tiny else engine_runs, threads=(1,) if tiny else (1, 2),
            compile_backend=os.environ.get("SMALLMIND_COMPILE_BACKEND", "inductor")),
            log=(lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else None)

    measure = {"waterfall": lambda: measure_waterfall(model, settings, study.phases),
               "diffs": diffs, "training": training, "init": init, "compile": compile_forms,
               "scaling": scaling, "quantized": quantized, "speculative": speculative,
               "engines": engines}
    for part in PARTS:
        if part in parts:
            if progress and part == "waterfall":
                print("smallmind: the waterfall: phase0 to max, switch by switch", file=sys.stderr)
            begin = time.perf_counter()
            setattr(study, part, measure[part]())
            study.durations[part] = time.perf_counter() - begin
    return study


def trace_study(study: StudyResult, model, settings: BenchSettings, logdir="runs", out="results",
                phases=None, progress=False) -> StudyResult:
    """Profiler traces of each of `phases` (default: the study's presets) under logdir; their
    small offline pictures are copied beside the report (out/traces/, paths relative to out)."""
    begin = time.perf_counter()
    for name in progress_over(list(phases or study.phases), "traces", progress):
        # phase0's per-element loops make a trace of tens of MB per step: profile one
        trace = write_traces(model, name, logdir, prompt_len=settings.prompt_len,
                             seed=settings.seed, active=1 if name == "phase0" else 2)
        kept = []
        # the study's own folder of this phase's views: what an older run left there goes
        shutil.rmtree(Path(out) / "traces" / trace.name, ignore_errors=True)
        for picture in trace.pictures:
            target = Path(out) / "traces" / trace.name / Path(picture).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(picture, target)
            kept.append(str(target.relative_to(out)))
        trace.pictures = kept
        study.traces[name] = trace
    study.durations["traces"] = time.perf_counter() - begin
    return study


def run_steps(model, settings: BenchSettings, steps=STEPS, *, study: "StudyResult | None" = None,
              phases=None, peers=("hf",), logdir="runs", out="results", engine_shapes=("seed",),
              progress=False, weights="random", prompt=None,
              prompt_text: "str | None" = None) -> StudyResult:
    """`steps` (of STEPS) in order, into `study` (e.g. read from an earlier results.json: each
    step replaces its own section, "presets" the presets' table, the peers and the limits) or
    into a new study, which starts with "presets"."""
    for step in steps:
        if step not in STEPS:
            raise ValueError(f"unknown step {step!r}; choose from: {', '.join(STEPS)}")
        if step == "presets":
            fresh = run_study(model, phases, peers, settings, progress=progress, weights=weights,
                              prompt=prompt, prompt_text=prompt_text)
            study = fresh if study is None else replace(
                fresh, **{name: getattr(study, name) for name in (*PARTS, "traces")},
                durations=study.durations | fresh.durations)
        elif study is None:
            raise ValueError(f"{step!r} extends a study: run 'presets' first")
        elif step == "traces":
            trace_study(study, model, settings, logdir, out, phases, progress)
        else:
            extend_study(study, model, settings, [step], progress=progress, prompt=prompt,
                         prompt_text=prompt_text, engine_shapes=engine_shapes, out=out)
    return study
