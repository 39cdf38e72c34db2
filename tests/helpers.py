"""What several test modules share: shapes, a skip for unbuildable custom ops, allocation counts,
the experiment scripts as modules."""
import importlib
import importlib.util
from pathlib import Path

import pytest
from torch.profiler import ProfilerActivity, profile

from smallmind_torch import ModelConfig
from smallmind_torch.ops import CustomOpsUnavailable
from smallmind_torch.weight_formats import FormatUnavailable
from smallmind_torch.study.protocol.profiling import allocations_from_events

# The seed shape and two others (odd head size, a single head) that every preset must match.
SHAPES = {
    "seed": ModelConfig(),
    "odd": ModelConfig(n_layer=2, n_head=3, n_embd=48, vocab_size=97, block_size=40),
    "one_head": ModelConfig(n_layer=1, n_head=1, n_embd=16, vocab_size=33, block_size=16),
}
TINY = ModelConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=64, block_size=32)

# every int argument of an op is fuzzed at these values too (C++ int64 extremes, overflow bait)
INT_EXTREMES = [0, -1, 1, 2**31, 2**62, 2**63 - 3, 2**63 - 1, -2**63]


def assert_pos_and_n_head_refused(bad_call, name: str, value: int):
    """A decode op called with `name` (pos or n_head) = `value` raises a ValueError: on the CPU
    the kernel's, which states the rule; on meta its fake's, which names the argument. pos = 0
    is valid."""
    if name == "pos" and value == 0:
        return
    rule = "pos must lie" if name == "pos" else "n_head"
    for device, match in (("cpu", rule), ("meta", f"invalid {name}")):
        with pytest.raises(ValueError, match=match):
            bad_call(device=device, **{name: value})


def set_phase_or_skip(model, phase):
    """Custom-op presets skip, with the reason, where the C++ ops cannot be built; a weight
    format that cannot hold the model's matrices (int4 on an odd width) skips too."""
    try:
        model.set_phase(phase)
    except CustomOpsUnavailable as exc:
        pytest.skip(f"custom ops unavailable: {exc}")
    except FormatUnavailable as exc:
        pytest.skip(str(exc))
    return model


def ops_binding_or_skip(module: str):
    """An op binding module (`smallmind_torch.ops._<name>`): importing it builds / loads the
    C++ extension. Only a failed build is a reason to skip the whole test module."""
    try:
        return importlib.import_module(f"smallmind_torch.ops.{module}")
    except CustomOpsUnavailable as exc:
        pytest.skip(f"smallmind C++ ops unavailable: {exc}", allow_module_level=True)


def allocations(fn):
    """(count, bytes) of allocations during fn(), read as the study reads them."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    nbytes, count = allocations_from_events(prof.profiler.kineto_results.events())
    return count, nbytes


def load_experiment(name: str):
    """experiments/<name>.py as a module (the scripts are not a package)."""
    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure_max_as_if_quiet(monkeypatch) -> None:
    """`max` measured (not SMALLMIND_MAX=first) and every measurement taken as quiet: the tests
    that use it assert what is chosen and cached, not whether the machine was quiet meanwhile
    (a timing, which a shared machine cannot promise); test_max's hog test checks that."""
    from smallmind_torch import tuning

    monkeypatch.delenv("SMALLMIND_MAX", raising=False)
    monkeypatch.setattr(tuning, "disturbances", lambda *args, **kwargs: [])
