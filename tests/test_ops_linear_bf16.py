"""bf16 linear (csrc/linear_lowp.cpp): what it has of its own, the rounding of its activations,
which kernel runs (the native bf16 dot products where the CPU has them, AVX512_BF16; the
widening path elsewhere), NaN; the rest, with the other linear ops, in
test_ops_linear_lowp.py."""
import pytest
import torch

from helpers import ops_binding_or_skip

_binding = ops_binding_or_skip("_linear_bf16")
linear_bf16 = _binding.linear_bf16

from smallmind_torch.weight_formats import round_to_bf16, to_bf16  # noqa: E402
from ops_isa import isa  # noqa: E402,F401 (a fixture)


def test_the_kernel_says_what_runs(isa):
    kernel = _binding.linear_bf16_kernel()
    if isa == "avx512" and _binding.has_bf16_dot():
        assert kernel == "avx512_bf16 dot products"
    else:
        assert kernel == f"{isa}, bf16 widened to float32" and not _binding.has_bf16_dot()


def test_the_activations_are_rounded_as_bf16_dot_products_read_them(isa):
    # x = 1 + 2^-10 is not a bf16: it rounds to 1, so the product with w = 1 is exactly 1
    x = torch.full((1, 32), 1 + 2.0 ** -10)
    w = to_bf16(torch.ones(1, 32))
    assert torch.equal(linear_bf16(x, w), torch.full((1, 1), 32.0))
    assert torch.equal(round_to_bf16(x), torch.ones(1, 32))


def test_to_bf16_refuses_what_it_cannot_hold():
    for bad in (torch.zeros(3), torch.zeros(2, 3, dtype=torch.int8), torch.tensor([[1.0, float("inf")]])):
        with pytest.raises(ValueError, match="to_bf16"):
            to_bf16(bad)


def test_nan_propagates(isa):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 40, generator=g), to_bf16(torch.randn(6, 40, generator=g)), None
    x[1, 33] = float("nan")  # in a row's tail and in a vector lane
    x[0, 3] = float("nan")
    assert torch.isnan(linear_bf16(x, w, b)).all()
