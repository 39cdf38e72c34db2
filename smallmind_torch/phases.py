"""A phase, given by name or as an OptConfig, resolved for one model: the only place where
"max" is decided.

`decide(phase, device=..., dtype=..., model=...)` returns a `runtime.Phase`: the concrete
OptConfig, the name it was asked by and a one-line description of what it is. `resolve(phase,
model)` makes that decision ready to run on the model (a `runtime.PhaseRuntime`, what
`GPT.set_phase` installs). The model, the study, the traces, the CLI and the experiments all go
through it, so `smallmind bench --phases max` and `smallmind profile --phase max` run the same
configuration and say which. "max" is the fastest of the MAX_CANDIDATES that run for the model's
device and dtype, measured on this machine (tuning.py) when more than one runs; "max-int8"
likewise of the int8 candidates (config.MAX_PRESETS).
"""
from __future__ import annotations

import torch

from . import ops, tuning
from .config import MAX_PRESETS, PHASES, OptConfig, presets
from .runtime import Phase, PhaseRuntime
from .weight_formats import FormatUnavailable, format_problem


def custom_ops_problem(opt: OptConfig, device, dtype) -> "str | None":
    """Why `opt` cannot run for a model on `device` with `dtype` parameters (None: it can).
    The custom ops are CPU float32 kernels, built on first use."""
    if not opt.needs_custom_ops:
        return None
    if torch.device(device).type != "cpu":
        return f"the custom ops have CPU kernels only; the model is on {device}"
    if dtype != torch.float32:
        return f"the custom ops are float32 kernels; the model's parameters are {dtype}"
    try:
        ops.load_all()
    except ops.CustomOpsUnavailable as exc:
        return str(exc)
    return None


def choose_max(device, dtype, model=None, name: str = "max", *, force: bool = False) -> Phase:
    """The fastest of MAX_PRESETS[name]'s candidates that runs for this device and dtype:
    measured on `model` when several run (tuning.choose; `force`: measured again even when
    cached), else the first that runs."""
    runnable, skipped = {}, []
    for label, opt in MAX_PRESETS[name].items():
        problem = custom_ops_problem(opt, device, dtype)
        if problem is None:
            runnable[label] = opt
        elif not skipped or problem != skipped[-1][1]:
            skipped.append((label, problem))
    if model is not None and torch.device(device).type == "cpu" and len(runnable) > 1:
        choice = tuning.choose(model, runnable, name, force=force)
        label, how = choice.label, choice.describe()
    else:
        label, how = next(iter(runnable)), "the first that runs here"
    notes = [how] + [f"not {label}: {problem}" for label, problem in skipped]
    return Phase(name, runnable[label], f"{name} = {label} ({'; '.join(notes)})", name)


def decide(phase: "str | OptConfig", *, device="cpu", dtype=torch.float32, model=None) -> Phase:
    """The concrete phase a model on `device` with `dtype` parameters runs for `phase` (for
    "max", measured on `model` when given).

    Raises ValueError for an unknown name and ops.CustomOpsUnavailable when a fixed preset or
    an OptConfig needs custom ops that cannot run here ("max" and "max-int8" never raise: each
    falls back to its last candidate, which needs no custom op)."""
    if isinstance(phase, OptConfig):
        name, opt = "custom", phase
    elif isinstance(phase, str) and phase in MAX_PRESETS:
        return choose_max(device, dtype, model, phase)
    elif isinstance(phase, str) and phase in PHASES:
        name, opt = phase, PHASES[phase]
    else:
        raise ValueError(f"unknown phase {phase!r}; allowed: {list(presets())} or an OptConfig")
    problem = custom_ops_problem(opt, device, dtype)
    if problem is not None:
        raise ops.CustomOpsUnavailable(
            f"phase {name!r} uses custom ops ({', '.join(opt.custom_op_forms)}), which cannot "
            f"run here: {problem}. Presets without custom forms (reference, phase0, phase1) "
            f"and {' and '.join(repr(n) for n in MAX_PRESETS)} run anywhere.")
    forms = opt.custom_op_forms
    return Phase(name, opt, f"{name} ({'custom ops: ' + ', '.join(forms) if forms else 'PyTorch only'})",
                 phase)


def resolve(phase: "str | OptConfig | Phase | PhaseRuntime", model) -> PhaseRuntime:
    """What `model` runs for `phase`: decided for its device and dtype (decide), then made
    ready on it. A Phase is made ready as it is; a PhaseRuntime of this model is returned.
    Raises FormatUnavailable (a ValueError) where the phase's weight format cannot hold the
    model's matrices (int4 on a width that is not a multiple of 32)."""
    if isinstance(phase, PhaseRuntime):
        return phase
    problem = format_problem(_weights_of(phase), model.config)
    if problem is not None:  # before "max-int4" measures its candidates
        raise FormatUnavailable(f"phase {getattr(phase, 'requested', phase)!r} cannot run on "
                                f"this model: {problem}")
    if not isinstance(phase, Phase):
        param = model.transformer.wte.weight
        phase = decide(phase, device=param.device, dtype=param.dtype, model=model)
    return PhaseRuntime(model, phase)


def _weights_of(phase) -> str:
    """The weight format `phase` runs in (a max preset's: its candidates', which share one)."""
    if isinstance(phase, Phase):
        return phase.opt.weights
    if isinstance(phase, OptConfig):
        return phase.weights
    if isinstance(phase, str) and phase in MAX_PRESETS:
        return next(iter(MAX_PRESETS[phase].values())).weights
    return "fp32"
