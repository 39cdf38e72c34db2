import pytest
import torch

from smallmind_torch import PHASES, ModelConfig

# The seed shape and two others (odd head size, a single head) that every preset must match.
SHAPES = {
    "seed": ModelConfig(),
    "odd": ModelConfig(n_layer=2, n_head=3, n_embd=48, vocab_size=97, block_size=40),
    "one_head": ModelConfig(n_layer=1, n_head=1, n_embd=16, vocab_size=33, block_size=16),
}
TINY = ModelConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=64, block_size=32)


def set_phase_or_skip(model, phase):
    """Custom-op presets skip, with the reason, where the C++ ops cannot be built."""
    from smallmind_torch.ops._build import CustomOpsUnavailable

    try:
        model.set_phase(phase)
    except CustomOpsUnavailable as exc:
        pytest.skip(f"custom ops unavailable: {exc}")
    return model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)



def ops_binding_or_skip(module: str):
    """An op binding module (`smallmind_torch.ops._<name>`): importing it builds / loads the
    C++ extension. Only a failed build is a reason to skip the whole test module."""
    import importlib

    from smallmind_torch.ops import CustomOpsUnavailable

    try:
        return importlib.import_module(f"smallmind_torch.ops.{module}")
    except CustomOpsUnavailable as exc:
        pytest.skip(f"smallmind C++ ops unavailable: {exc}", allow_module_level=True)
