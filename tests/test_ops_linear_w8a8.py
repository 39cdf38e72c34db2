"""w8a8 linear (csrc/linear_lowp.cpp: int8 weights, the rows of x quantized to int8 on the fly,
exact int32 dot products): what it has of its own, the quantization of its activations, which
kernel runs (VNNI where the CPU has it, vpmaddubsw on AVX2, also AVX-512 without VNNI, plain
C++), saturation, non-finite rows; the rest, with the other linear ops, in
test_ops_linear_lowp.py."""
import torch
from torch.testing import assert_close

from helpers import ops_binding_or_skip

_binding = ops_binding_or_skip("_linear_w8a8")
linear_w8a8, linear_w8a8_reference = _binding.linear_w8a8, _binding.linear_w8a8_reference

from smallmind_torch.weight_formats import quantize_per_channel, quantize_rows  # noqa: E402
from ops_isa import isa  # noqa: E402,F401 (a fixture)


def test_the_kernel_says_what_runs(isa):
    expected = {"avx512": ("avx512_vnni dot products", "avx2 maddubs dot products"),
                "avx2": ("avx2 maddubs dot products",), "scalar": ("scalar int32 dot products",)}
    assert _binding.linear_w8a8_kernel() in expected[isa]


def test_rows_are_quantized_symmetrically_per_row():
    x = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, float("nan"), 1.0]])
    q, s = quantize_rows(x)
    assert torch.equal(q[0], torch.tensor([64, -127, 32], dtype=torch.int8))  # 63.5 -> 64 (even)
    assert s[0] == 1.0 / 127 and s[1] == 1.0 and not q[1].any()
    assert torch.isnan(s[2]) and not q[2].any()


def test_extreme_products_do_not_saturate(isa):
    # every |product| = 127 * 127: vpmaddubsw's int16 pair sums must not saturate
    x = torch.tensor([[1.0, -1.0] * 64])
    w_q = torch.tensor([[127, -127] * 64, [-127, -127] * 64], dtype=torch.int8)
    y = linear_w8a8(x, w_q, torch.ones(2))
    assert torch.equal(y, torch.tensor([[128 * 127.0, 0.0]]))


def test_a_non_finite_row_gives_nan_and_leaves_the_others(isa):
    g = torch.Generator().manual_seed(0)
    x, b = torch.randn(3, 40, generator=g), torch.randn(6, generator=g)
    w_q, scale = quantize_per_channel(torch.randn(6, 40, generator=g))
    x[1, 33] = float("nan")
    x[2, 3] = float("inf")
    y = linear_w8a8(x, w_q, scale, b)
    assert torch.isnan(y[1:]).all() and torch.isfinite(y[0]).all()
    assert_close(y[:1], linear_w8a8_reference(x[:1], w_q, scale, b), rtol=1e-5, atol=1e-5)
