"""Sampling and streaming."""
import pytest
import torch

from smallmind_torch import GPT
from helpers import TINY


def test_sampling_is_reproducible_with_a_seeded_generator():
    model = GPT(TINY).eval()
    idx = torch.zeros(2, 3, dtype=torch.long)
    runs = [model.generate(idx, 40, temperature=0.9, top_k=10,
                           generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = model.generate(idx, 40, temperature=0.9, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(runs[0], other)


@pytest.mark.parametrize("temperature", [1.0, 1e30, 3.5e38, float("inf")])
def test_top_k_one_is_greedy(temperature):
    """At any temperature, huge ones included (where the scaled logits are all 0)."""
    model = GPT(TINY).eval()
    idx = torch.zeros(1, 3, dtype=torch.long)
    assert torch.equal(model.generate(idx, 20, temperature=temperature, top_k=1),
                       model.generate(idx, 20))


@pytest.mark.parametrize("temperature", [5e-324, 1e-320, 1e-40])
def test_temperatures_below_float32s_smallest_normal_are_greedy(temperature):
    model = GPT(TINY).eval()
    idx = torch.zeros(1, 3, dtype=torch.long)
    assert torch.equal(model.generate(idx, 10, temperature=temperature), model.generate(idx, 10))


def test_stream_yields_the_generated_tokens():
    model = GPT(TINY).eval().set_phase("max")
    idx = torch.zeros(2, 3, dtype=torch.long)
    steps = list(model.generate_stream(idx, 7))
    assert len(steps) == 7 and all(s.shape == (2, 1) for s in steps)
    assert torch.equal(torch.cat([idx] + steps, dim=1), model.generate(idx, 7))
    assert model.generate(idx, 0).shape == (2, 3)


def test_long_prompt_is_cropped_like_nanogpt():
    model = GPT(TINY).eval()
    idx = torch.randint(0, TINY.vocab_size, (1, 50))
    out = model.generate(idx, 4)
    assert torch.equal(out[:, :50], idx)
    cropped = model.generate(idx[:, -TINY.block_size:], 4)
    assert torch.equal(out[:, 50:], cropped[:, TINY.block_size:])
