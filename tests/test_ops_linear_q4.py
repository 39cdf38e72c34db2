"""int4 linear (csrc/linear_lowp.cpp, linear_q4: group-wise int4 weights, the rows of x quantized
to int8 as w8a8's, exact int32 sums per group) on every ISA: against its naive loop
(smallmind_naive::linear_q4) and the Python reference (weight_formats.linear_w4a8_reference), the
format itself (weight_formats.quantize_int4), the extremes, opcheck and bad input."""
import pytest
import torch
from torch.testing import assert_close

from helpers import ops_binding_or_skip

_binding = ops_binding_or_skip("_linear_q4")
linear_q4 = _binding.linear_q4

from smallmind_torch.weight_formats import (Int4Weight, linear_w4a8_reference, pack_int4,  # noqa: E402
                                            quantize_int4, unpack_int4)
from ops_isa import isa  # noqa: E402,F401 (a fixture)

naive = torch.ops.smallmind_naive.linear_q4


def _case(M, N, K, G, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
    return x, quantize_int4(w, G), torch.randn(N, generator=g) if bias else None


# K = one group, several groups, a tail of fewer than 4 blocks (the kernels' chunk), 4C-like;
# odd M (a group of 4 rows and the rows left over) and odd N
@pytest.mark.parametrize("M, N, K, G", [(1, 7, 32, 32), (3, 13, 96, 32), (5, 9, 160, 32),
                                        (4, 17, 768, 32), (2, 5, 64, 64), (1, 11, 320, 64),
                                        (6, 3, 384, 128), (3, 8, 192, 96)])
def test_matches_naive_loop_and_reference(M, N, K, G, isa):
    x, w, b = _case(M, N, K, G)
    y = linear_q4(x, w.packed, w.scales, G, b)
    assert_close(y, naive(x, w.packed, w.scales, G, b), rtol=1e-5, atol=1e-5)
    assert_close(y, linear_w4a8_reference(x, w, b), rtol=1e-4, atol=1e-4)


def test_leading_dims_out_and_no_bias(isa):
    x, w, _ = _case(6, 10, 64, 32)
    x = x.view(2, 3, 64)
    out = torch.empty(2, 3, 10)
    assert linear_q4(x, w.packed, w.scales, 32, out=out) is out
    assert_close(out, naive(x, w.packed, w.scales, 32), rtol=1e-5, atol=1e-5)


def test_the_kernel_says_what_runs(isa):
    expected = {"avx512": ("avx512_vnni dot products", "avx2 maddubs dot products"),
                "avx2": ("avx2 maddubs dot products",), "scalar": ("scalar int32 dot products",)}
    assert _binding.linear_q4_kernel() in expected[isa]


def test_format_round_trip_error_is_at_most_half_a_step():
    w = torch.randn(12, 128, generator=torch.Generator().manual_seed(3)) * 3
    for G in (32, 64):
        q = quantize_int4(w, G)
        assert q.packed.dtype == torch.uint8 and q.packed.shape == (12, 64)
        assert q.scales.shape == (12, 128 // G)
        err = (q.dequantize() - w).abs().view(12, 128 // G, G)
        assert (err <= q.scales[:, :, None] / 2 * (1 + 1e-6)).all()


def test_layout_is_q4_0s():
    """Byte i of a block of 32 holds element i + 8 in its low nibble, element i + 16 + 8 in its
    high one."""
    q = torch.arange(-7, 8).repeat(3)[:32].view(1, 32)
    packed = pack_int4(q)
    assert packed.shape == (1, 16)
    assert packed[0, 0] == (q[0, 0] + 8) | ((q[0, 16] + 8) << 4)
    assert torch.equal(unpack_int4(packed), q.to(torch.int8))


def test_extremes(isa):
    """An all-zero group (scale 1, q 0), a -max weight (q = -7), saturating activations."""
    w = torch.randn(3, 64, generator=torch.Generator().manual_seed(4))
    w[0, :32] = 0.0
    w[1, 5] = -10.0
    q = quantize_int4(w)
    assert q.scales[0, 0] == 1.0 and not (unpack_int4(q.packed)[0, :32]).any()
    assert unpack_int4(q.packed)[1, 5] == -7 and q.dequantize()[1, 5] == -10.0
    x = torch.tensor([[1.0, -1.0] * 32, [-5.0] * 64])
    assert_close(linear_q4(x, q.packed, q.scales, 32), naive(x, q.packed, q.scales, 32),
                 rtol=1e-5, atol=1e-5)
    # every nibble 15 (q = 7) against 127: the largest products, exact
    packed = torch.full((2, 32), 0xFF, dtype=torch.uint8)
    y = linear_q4(torch.ones(1, 64), packed, torch.ones(2, 2), 32)
    assert torch.equal(y, torch.full((1, 2), 7.0 * 64))


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(bias):
    x, w, b = _case(3, 5, 64, 32, bias=bias)
    torch.library.opcheck(torch.ops.smallmind.linear_q4.default, (x, w.packed, w.scales, 32, b))


def test_bad_group_sizes_are_refused_by_the_format():
    w = torch.randn(4, 96)
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_int4(w, 48)
    with pytest.raises(ValueError, match="must divide the weight's K"):
        quantize_int4(w, 64)
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_int4(torch.full((2, 32), float("inf")))


@pytest.mark.parametrize("change, match", [
    (dict(group_size=48), "group_size must be a positive multiple of 32"),
    (dict(group_size=0), "group_size must be a positive multiple of 32"),
    (dict(packed=lambda p: p.to(torch.int8)), r"'w_packed' must have dtype Byte"),
    (dict(packed=lambda p: p[:, :-1].contiguous()), r"size mismatch, x.size\(-1\) = 128"),
    (dict(x=lambda x: x[:, :32].contiguous(), packed=lambda p: p[:, :16].contiguous()),
     "must be a multiple of group_size"),
    (dict(scales=lambda s: s[:, :1].contiguous()), r"'scales' must have shape"),
    (dict(scales=lambda s: s.double()), r"'scales' must have dtype Float"),
    (dict(packed=lambda p: p.t()), "'w_packed' must be contiguous"),
])
def test_bad_input_gets_a_clear_error(change, match):
    x, w, b = _case(2, 4, 128, 64)
    x = change.get("x", lambda t: t)(x)
    packed = change.get("packed", lambda t: t)(w.packed)
    scales = change.get("scales", lambda t: t)(w.scales)
    with pytest.raises((RuntimeError, ValueError), match=match):
        linear_q4(x, packed, scales, change.get("group_size", 64), b)


def test_inference_only():
    x, w, _ = _case(1, 4, 32, 32)
    with pytest.raises(RuntimeError, match="inference only"):
        linear_q4(x.requires_grad_(), w.packed, w.scales, 32)
