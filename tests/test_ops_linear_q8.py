"""Weight-only int8 linear (csrc/linear_q8.cpp) against its PyTorch reference, on every ISA."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch.testing import assert_close

from helpers import ops_binding_or_skip

_binding = ops_binding_or_skip("_linear_q8")
linear_q8, linear_q8_reference = _binding.linear_q8, _binding.linear_q8_reference
quantize_per_channel, dequantize = _binding.quantize_per_channel, _binding.dequantize
ops = torch.ops.smallmind

from ops_isa import ISAS, isa, use_isa  # noqa: E402,F401 (isa: a fixture)

CASES = [  # (x shape, N): seed decode and prefill shapes, GEMV tails, one row, K below a vector
    ((1, 256), 768),
    ((16, 256), 1024),
    ((2, 5, 1024), 256),
    ((3, 37), 70),
    ((7, 3), 5),
    ((1, 1), 1),
]


def _assert_matches(y, x, w_q, scale, b):
    # float32 sums in another order: the error grows with sqrt(K), as the outputs do
    K = max(1, x.shape[-1])
    assert_close(y, linear_q8_reference(x, w_q, scale, b), rtol=1e-5, atol=1e-5 * K ** 0.5)


def _args(x_shape, N, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*x_shape, generator=g)
    w_q, scale = quantize_per_channel(torch.randn(N, x_shape[-1], generator=g))
    return x, w_q, scale, (torch.randn(N, generator=g) if bias else None)


@pytest.mark.parametrize("x_shape,N", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_reference(x_shape, N, bias, isa):
    x, w_q, scale, b = _args(x_shape, N, bias)
    _assert_matches(linear_q8(x, w_q, scale, b), x, w_q, scale, b)


def test_threads_split_the_output_features(isa):
    old = torch.get_num_threads()
    x, w_q, scale, b = _args((3, 256), 1000)
    try:
        torch.set_num_threads(2)
        two = linear_q8(x, w_q, scale, b)
        torch.set_num_threads(1)
        one = linear_q8(x, w_q, scale, b)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)  # each output is one thread's sum in the same order


def test_quantization_error_is_the_weights_rounding():
    w = torch.randn(64, 256)
    w_q, scale = quantize_per_channel(w)
    assert w_q.dtype == torch.int8 and int(w_q.abs().max()) == 127
    # each weight within half a step of its row
    assert ((dequantize(w_q, scale) - w).abs() <= scale[:, None] / 2 + 1e-7).all()
    zero_q, zero_scale = quantize_per_channel(torch.zeros(2, 3))
    assert not zero_q.any() and torch.equal(zero_scale, torch.ones(2))


@pytest.mark.parametrize("bad", [torch.zeros(3), torch.zeros(2, 3, dtype=torch.int8),
                                 torch.tensor([[1.0, float("nan")]])])
def test_quantize_refuses_what_int8_cannot_hold(bad):
    with pytest.raises(ValueError, match="quantize_per_channel"):
        quantize_per_channel(bad)


def test_empty_and_k_zero():
    x, w_q, scale, b = _args((0, 8), 4)
    assert linear_q8(x, w_q, scale, b).shape == (0, 4)
    x, w_q, scale, b = torch.randn(2, 0), torch.zeros(3, 0, dtype=torch.int8), torch.ones(3), \
        torch.randn(3)
    assert_close(linear_q8(x, w_q, scale, b), b.expand(2, 3))


def test_nan_propagates(isa):
    x, w_q, scale, b = _args((2, 40), 6)
    x[1, 33] = float("nan")  # in the tail of a 16-wide vector loop, and in a vector lane
    x[0, 3] = float("nan")
    y = linear_q8(x, w_q, scale, b)
    assert torch.isnan(y).all()


def test_gradients_match_reference():
    x, w_q, scale, b = _args((4, 24), 10)
    x.requires_grad_(True)
    b.requires_grad_(True)
    g = torch.randn(4, 10)
    linear_q8(x, w_q, scale, b).backward(g)
    gx, gb = x.grad.clone(), b.grad.clone()
    x.grad = b.grad = None
    F.linear(x, dequantize(w_q, scale), b).backward(g)
    assert_close(gx, x.grad)
    assert_close(gb, b.grad)


def test_out_is_written_in_place(isa):
    x, w_q, scale, b = _args((2, 3, 40), 24)
    out = torch.empty(2, 3, 24)
    assert linear_q8(x, w_q, scale, b, out=out) is out
    _assert_matches(out, x, w_q, scale, b)


def test_out_may_be_the_input():
    x, w_q, scale, b = _args((3, 16), 16)
    expected = linear_q8_reference(x, w_q, scale, b)
    linear_q8(x, w_q, scale, b, out=x)  # out overwrites x: computed through a temporary
    assert_close(x, expected, rtol=1e-5, atol=1e-4)


def test_out_with_autograd_records_the_gradient():
    x, w_q, scale, b = _args((3, 20), 9)
    x.requires_grad_(True)
    out = linear_q8(x, w_q, scale, b, out=torch.empty(3, 9))
    out.sum().backward()
    assert_close(x.grad, dequantize(w_q, scale).sum(0).expand(3, 20))


def test_opcheck():
    x, w_q, scale, b = _args((3, 20), 9)
    torch.library.opcheck(ops.linear_q8.default, (x, w_q, scale, b))
    torch.library.opcheck(ops.linear_q8_out.default, (x, w_q, scale, b), {"out": torch.empty(3, 9)})
    torch.library.opcheck(ops.linear_q8.default, (x.clone().requires_grad_(), w_q, scale, b))
    torch.library.opcheck(ops.linear_q8_inference.default, (x, w_q, scale, None))


BAD = [  # (changes, match): the CPU kernel and the fake refuse the same way
    (dict(x=torch.randn(3, 19)), "size mismatch"),
    (dict(x=torch.randn(3, 20, dtype=torch.float64)), "'x' must have dtype Float"),
    (dict(w_q=torch.zeros(9, 20)), "'w_q' must have dtype Char"),
    (dict(w_q=torch.zeros(9, 20, 1, dtype=torch.int8)), "'w_q' must be 2-D"),
    (dict(w_q=torch.zeros(20, 9, dtype=torch.int8).t()), "'w_q' must be contiguous"),
    (dict(scale=torch.ones(8)), "'scale' must have shape"),
    (dict(scale=torch.ones(9, dtype=torch.float64)), "'scale' must have dtype Float"),
    (dict(bias=torch.ones(10)), "'bias' must have shape"),
    (dict(x=torch.tensor(1.0)), "'x' must have at least 1"),
    (dict(out=torch.empty(3, 8)), "'out' must have shape"),
    (dict(out=torch.empty(9, 3).t()), "'out' must be contiguous"),
]


def _bad_call(device="cpu", **changes):
    x, w_q, scale, b = _args((3, 20), 9)
    args = dict(x=x, w_q=w_q, scale=scale, bias=b)
    args.update(changes)
    args = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    return linear_q8(**args)


@pytest.mark.parametrize("changes, match", BAD)
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_bad_input(changes, match, device):
    with pytest.raises((RuntimeError, ValueError), match=match):
        _bad_call(device=device, **changes)


def test_not_a_tensor():
    x, w_q, scale, b = _args((3, 20), 9)
    with pytest.raises(TypeError, match="'w_q' must be a torch.Tensor"):
        linear_q8(x, [1, 2], scale, b)


@settings(max_examples=40, deadline=None)
@given(M=st.integers(1, 9), K=st.integers(1, 70), N=st.integers(1, 80), bias=st.booleans(),
       isa_name=st.sampled_from(ISAS), seed=st.integers(0, 2**16))
def test_fuzz_matches_reference(M, K, N, bias, isa_name, seed):
    x, w_q, scale, b = _args((M, K), N, bias, seed)
    with use_isa(isa_name):
        y = linear_q8(x, w_q, scale, b)
    _assert_matches(y, x, w_q, scale, b)
