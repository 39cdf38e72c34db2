"""The whole study in one run: every preset, the peers and the machine limits, one model's
weights."""
from __future__ import annotations

from dataclasses import asdict
from typing import Callable, Iterable

from ..config import OptConfig, presets
from .harness import BenchSettings, ReferenceRun, _device_of, measure_machine, measure_preset
from .machine import environment
from .peers import PEERS
from .results import StudyResult


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
    try:
        limits = measure_machine(model, settings) if machine else None
        reference = ReferenceRun(model, settings, prompt)
        results = {}
        try:
            from tqdm.auto import tqdm
            bar = tqdm(items, desc="presets", disable=not progress, unit="preset")
        except ImportError:  # pragma: no cover
            bar = items
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
                       phases=results, peers=peer_results, weights=weights)
