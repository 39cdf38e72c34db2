"""Sampling and streaming."""
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


def test_top_k_one_is_greedy():
    model = GPT(TINY).eval()
    idx = torch.zeros(1, 3, dtype=torch.long)
    assert torch.equal(model.generate(idx, 20, temperature=1.0, top_k=1), model.generate(idx, 20))


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
