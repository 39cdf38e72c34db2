"""Bad input gets a clear error naming what was wrong and what is allowed."""
import pytest
import torch

from smallmind_torch import GPT, ModelConfig, OptConfig
from helpers import TINY


def test_config_errors():
    with pytest.raises(ValueError, match=r"divisible by n_head .*allowed.*\[1, 2, 5, 10\]"):
        ModelConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="positive int"):
        ModelConfig(n_layer=0)
    with pytest.raises(ValueError, match=r"softmax='fast' is not a known form; allowed: \['naive', 'torch', 'custom'\]"):
        OptConfig(softmax="fast")
    with pytest.raises(ValueError, match="unknown OptConfig switch"):
        OptConfig().replace(softmaxx="torch")
    with pytest.raises(ValueError, match="workspace=1 is not a known form"):
        OptConfig(workspace=1)


def test_unknown_phase():
    with pytest.raises(ValueError, match=r"unknown phase 'phase9'; allowed: \['reference', 'phase0'"):
        GPT(TINY).set_phase("phase9")
    with pytest.raises(ValueError, match="unknown phase"):
        GPT(TINY, phase="turbo")


@pytest.mark.parametrize("idx, message", [
    (torch.tensor([[0, 64]]), r"token ids must lie in \[0, 63\]; got min 0, max 64"),
    (torch.tensor([[-1, 3]]), "token ids must lie in"),
    (torch.zeros(1, 33, dtype=torch.long), "sequence length 33 exceeds 32"),
    (torch.zeros(3, dtype=torch.long), r"shape \(B, T\)"),
    (torch.zeros(1, 3), "LongTensor"),
    (torch.zeros(1, 0, dtype=torch.long), "T >= 1"),
])
def test_forward_rejects(idx, message):
    with pytest.raises(ValueError, match=message):
        GPT(TINY)(idx)


def test_generate_rejects():
    model = GPT(TINY)
    idx = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="token ids"):
        model.generate(torch.tensor([[99]]), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(idx, -1)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(idx, 2, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(idx, 2, temperature=1.0, top_k=0)
    with pytest.raises(TypeError, match="ModelConfig"):
        GPT({"n_layer": 2})


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_embd=10**12 + 1, n_head=7), "not listed"),       # once spun building the divisor list
    (dict(n_embd=10**7 + 1, n_head=3), r"\[1, 11, 909091, 10000001\]"),
    (dict(n_embd=True, n_head=1), "positive int"),
    (dict(layer_norm_epsilon=-1.0), "finite number >= 0"),
    (dict(layer_norm_epsilon=float("nan")), "finite number >= 0"),
    (dict(layer_norm_epsilon="x"), "finite number >= 0"),
])
def test_config_values_are_checked_quickly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(temperature=float("nan")), ValueError, "temperature must be a number >= 0"),
    (dict(temperature="1"), ValueError, "temperature"),
    (dict(temperature=1.0, top_k=True), ValueError, "top_k must be an int >= 1"),
    (dict(temperature=1.0, generator=5), TypeError, "torch.Generator"),
    (dict(max_new_tokens=10**13), ValueError, "cannot allocate the token buffer"),
    (dict(max_new_tokens=2.0), ValueError, "max_new_tokens must be an int"),
])
def test_generate_arguments_are_checked(kwargs, error, message):
    args = dict(max_new_tokens=3) | kwargs
    with pytest.raises(error, match=message):
        GPT(TINY).generate(torch.zeros(1, 2, dtype=torch.long), **args)


def test_tiny_and_huge_temperatures_sample_without_nan():
    model = GPT(TINY).eval()
    idx = torch.zeros(1, 2, dtype=torch.long)
    greedy = model.generate(idx, 6)
    tiny = model.generate(idx, 6, temperature=1e-45, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tiny, greedy)  # a vanishing temperature is greedy, not a NaN error
    assert model.generate(idx, 6, temperature=float("inf")).shape == (1, 8)
    import numpy as np
    assert model.generate(idx, np.int64(2)).shape == (1, 4)


def test_buffer_sizes_and_devices_are_checked():
    model = GPT(TINY).set_phase("phase1")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_batch must be a positive int"):
            model.setup_workspace(bad)
    with pytest.raises(ValueError, match="idx is on meta"):
        model(torch.zeros(1, 2, dtype=torch.long, device="meta"))
