"""The whole study in one run: every preset, the peers and the machine limits, one model's
weights."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict
from typing import Callable, Iterable

from ..config import ModelConfig, OptConfig, presets
from ..model import GPT
from .harness import (BenchSettings, ReferenceRun, _device_of, fixed_prompt, measure_machine,
                      measure_preset, progress_over)
from .machine import environment
from .peers import PEERS
from .results import StudyResult
from .scaling import measure_scaling
from .training import TrainingResult, measure_init, measure_training_step
from .waterfall import measure_waterfall

GPT2_SMALL = ModelConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024)
PARTS = ("waterfall", "training", "init", "scaling", "quantized", "engines")
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
              on_result: "Callable[[object], None] | None" = None) -> StudyResult:
    """Every preset (default: config.presets()), the peers and the machine
    limits, on one model's weights, in one run. The model's phase is restored at the end.
    `prompt`: a (1, T) LongTensor instead of the fixed random prompt (e.g. encoded text)."""
    device = _device_of(model)
    previous = model.requested_phase
    items = _phase_items(phases)
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise ValueError(f"unknown peer(s) {unknown}; known: {list(PEERS)}")
    start = time.perf_counter()
    try:
        limits = measure_machine(model, settings, progress=progress) if machine else None
        reference = ReferenceRun(model, settings, prompt)
        results = {}
        bar = progress_over(items, "presets", progress)
        for name, preset in bar:
            if progress and hasattr(bar, "set_postfix_str"):
                bar.set_postfix_str(name)
            r = measure_preset(model, preset, settings, reference=reference, machine=limits,
                               name=name, progress=progress)
            results[name] = r
            if on_result:
                on_result(r)
        peer_results = {}
        for p in peers:
            peer_results[p] = PEERS[p](model, settings, reference=reference, progress=progress)
            if on_result:
                on_result(peer_results[p])
    finally:
        model.set_phase(previous)
    return StudyResult(model_config=asdict(model.config), num_parameters=model.num_parameters(),
                       settings=settings.to_dict(), env=environment(device), machine=limits,
                       phases=results, peers=peer_results, weights=weights,
                       durations={"presets, peers and machine limits": time.perf_counter() - start})


def extend_study(study: StudyResult, model, settings: BenchSettings, parts=PARTS, *,
                 presets_of=None, large: "ModelConfig | None" = GPT2_SMALL, progress=False,
                 prompt=None, engine_shapes=("seed",), engine_runs: int = 5) -> StudyResult:
    """Add to `study` (run on `model`) the parts beyond the presets' table, each timed:
    - "waterfall": phase0 to max, switch by switch (waterfall.py);
    - "training": one optimizer step per preset at batch 8 x block_size, and at the `large`
      shape (batch 1 x 256) for reference, phase3 and max (training.py);
    - "init": construction time of each init form at the model's and the `large` shape;
    - "scaling": tokens/s at batch 1, 4, 16 and decode ms by position per preset (scaling.py).
    `presets_of`: part -> preset names (default: the study's presets, minus phase0 for
    scaling: its no-cache line has the reference's shape at 30x the minutes).
    - "quantized": fp32 max against the int8 and bf16 weight formats, speed at 1 and 2 threads
      and accuracy against fp32 reference, the validation loss too when the weights are a
      checkpoint (quantized.py);
    - "engines": the peer engines on the model's weights and, for `engine_shapes` with
      "gpt2-small", at the large shape, each in its own process (peer_bench.py).
    Tiny settings shrink every part (and skip the large shape)."""
    names = [n for n in study.phases if study.phases[n].ok or study.phases[n].status == "unavailable"]
    chosen = {"waterfall": None, "training": names, "init": None,
              "scaling": [n for n in names if n != "phase0"], **(presets_of or {})}
    tiny = settings.smoke
    large = None if tiny else large
    timed = study.durations

    def run_part(part, fn):
        if part in parts:
            begin = time.perf_counter()
            study.sections[part] = fn()
            timed[part] = time.perf_counter() - begin

    def training():
        batch = (2, 16) if tiny else (8, model.config.block_size)

        def step(n):
            if n == "phase0" and batch[1] > 32:  # see PHASE0_TRAINING
                return TrainingResult(n, "skipped", PHASE0_TRAINING).to_dict()
            return measure_training_step(model, n, batch=batch, steps=1 if tiny else 3, name=n).to_dict()
        out = {"model": [step(n) for n in progress_over(chosen["training"], "training steps", progress)]}
        if large is not None:
            big = GPT(large)
            out["large"] = [measure_training_step(big, n, batch=(1, 256), steps=2, name=n).to_dict()
                            for n in progress_over(("reference", "phase3", "max"),
                                                   "training steps, GPT-2 small", progress)]
        return out

    def init():
        shapes = {"model": model.config, **({"large": large} if large is not None else {})}
        return {key: [measure_init(config, form, repeat=1 if tiny else 3).to_dict()
                      for form in ("default", "fast")] for key, config in shapes.items()}

    def scaling():
        kw = dict(new_tokens=settings.new_tokens, prompt_len=settings.prompt_len,
                  runs=settings.runs, batches=(1, 2) if tiny else (1, 4, 16))
        return [measure_scaling(model, n, name=n, **kw).to_dict()
                for n in progress_over(chosen["scaling"], "batches and positions", progress)]

    def quantized():
        from .quantized import markdown, measure_formats

        val = None
        if study.weights.startswith("checkpoint"):  # trained on the default corpus
            from ..train.corpus import default_tokens, train_val_split
            from ..train.tokenizer import Tokenizer

            _, val = train_val_split(default_tokens(Tokenizer.default()))
        section = measure_formats(model, val, thread_counts=(1,) if tiny else (1, 2),
                                  runs=1 if tiny else 5, new_tokens=settings.new_tokens,
                                  val_batches=1 if tiny else 10, batch_size=2 if tiny else 8)
        study.sections["quantized_markdown"] = markdown(section)
        return section

    def engines():
        from .peer_bench import PeerSettings, make_workload, run_peers
        from .peer_results import markdown

        n = settings.new_tokens
        first = (prompt if prompt is not None else fixed_prompt(model.config, settings.prompt_len,
                                                                  settings.seed))[0].tolist()
        workloads = [make_workload("seed", model, first, new_tokens=n, weights=study.weights)]
        if large is not None and "gpt2-small" in engine_shapes:
            big = GPT(large)
            workloads.append(make_workload(
                "gpt2-small", big, fixed_prompt(large, settings.prompt_len, settings.seed)[0].tolist(),
                new_tokens=n, long_prompt=512, seed=settings.seed, weights="random"))
        peers = run_peers(workloads, settings=PeerSettings(
            new_tokens=n, runs=1 if tiny else engine_runs, threads=(1,) if tiny else (1, 2),
            compile_backend=os.environ.get("SMALLMIND_COMPILE_BACKEND", "inductor")),
            log=(lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else None)
        study.sections["engines_markdown"] = markdown(peers)
        return peers.to_dict()

    previous = model.requested_phase
    try:
        if progress and "waterfall" in parts:
            print("smallmind: the waterfall: phase0 to max, switch by switch", file=sys.stderr)
        run_part("waterfall", lambda: measure_waterfall(model, settings, study.phases))
        run_part("training", training)
        run_part("init", init)
        run_part("scaling", scaling)
        run_part("quantized", quantized)
        run_part("engines", engines)
    finally:
        model.set_phase(previous)
    return study
