"""The three linear ops on low-precision weights (csrc/linear_lowp.cpp), each against its PyTorch
reference on every ISA, with what they share checked once for all three: shapes, threads, the
out-variant, empty inputs, the gradient straight through x and bias, opcheck, bad input.
What each op has of its own (quantization, rounding, NaN, which kernel runs) is in
test_ops_linear_q8.py, test_ops_linear_bf16.py and test_ops_linear_w8a8.py."""
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch.testing import assert_close

from helpers import ops_binding_or_skip

q8 = ops_binding_or_skip("_linear_q8")
bf16 = ops_binding_or_skip("_linear_bf16")
w8a8 = ops_binding_or_skip("_linear_w8a8")
ops = torch.ops.smallmind

from smallmind_torch.weight_formats import dequantize, quantize_per_channel, to_bf16  # noqa: E402
from ops_isa import ISAS, isa, use_isa  # noqa: E402,F401 (isa: a fixture)


@dataclass(frozen=True)
class Op:
    name: str
    call: Callable                  # the binding: (x, *weight, bias, out=None)
    reference: Callable             # (x, *weight, bias)
    weight: Callable                # float weight (N, K) -> the op's weight arguments
    float_weight: Callable          # the op's weight arguments -> the weight the gradient uses
    weight_dtype: str               # in the error of a float weight: "Char", "BFloat16"
    rtol: float = 1e-5
    atol_per_sqrt_k: float = 1e-5   # float sums in another order: error grows with sqrt(K)


OPS = {
    "linear_q8": Op("linear_q8", q8.linear_q8, q8.linear_q8_reference, quantize_per_channel,
                    dequantize, "Char"),
    "linear_bf16": Op("linear_bf16", bf16.linear_bf16, bf16.linear_bf16_reference,
                      lambda w: (to_bf16(w),), lambda w: w.float(), "BFloat16"),
    # int32 sums are exact on both sides: only the scaling rounds
    "linear_w8a8": Op("linear_w8a8", w8a8.linear_w8a8, w8a8.linear_w8a8_reference,
                      quantize_per_channel, dequantize, "Char", atol_per_sqrt_k=0.0),
}
each_op = pytest.mark.parametrize("op", list(OPS.values()), ids=list(OPS))

CASES = [  # (x shape, N): decode and prefill shapes, vector tails, one row, K below a vector;
    # from 32 rows on the int8 ops run the library's GEMM on their weights (prefill)
    ((1, 256), 768),
    ((16, 256), 1024),
    ((40, 100), 33),
    ((2, 17, 48), 12),
    ((2, 5, 1024), 256),
    ((3, 37), 70),
    ((2, 129), 9),
    ((7, 3), 5),
    ((1, 1), 1),
]


def _args(op, x_shape, N, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*x_shape, generator=g)
    weight = tuple(op.weight(torch.randn(N, x_shape[-1], generator=g)))
    return x, weight, (torch.randn(N, generator=g) if bias else None)


def _assert_matches(op, y, x, weight, b):
    K = max(1, x.shape[-1])
    assert_close(y, op.reference(x, *weight, b), rtol=op.rtol,
                 atol=1e-5 + op.atol_per_sqrt_k * K ** 0.5)


@each_op
@pytest.mark.parametrize("x_shape,N", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_reference(op, x_shape, N, bias, isa):
    x, weight, b = _args(op, x_shape, N, bias)
    _assert_matches(op, op.call(x, *weight, b), x, weight, b)


# (M, K, N) about the kernels' edges: 4-row groups whole and cut, K about the vector widths (16,
# 8, 1), the 32 bf16 pairs and the 64 / 128 int8 lanes of an AVX-512 dot product, N split over
# threads (from 128 weight rows on), and 32 rows on (the library's GEMM)
NAIVE_SHAPES = [(1, 1, 1), (3, 7, 5), (4, 32, 3), (5, 33, 9), (1, 64, 70), (2, 65, 17),
                (9, 129, 130), (1, 200, 64), (33, 40, 20)]


@each_op
def test_matches_naive_loop(op, isa):
    """The op on this ISA against its naive loop (linear_lowp_kernel.h's linear_lowp_naive,
    linear_w8a8_naive)."""
    naive = getattr(torch.ops.smallmind_naive, op.name)
    for M, K, N in NAIVE_SHAPES:
        for bias in (True, False):
            x, weight, b = _args(op, (M, K), N, bias)
            assert_close(op.call(x, *weight, b), naive(x, *weight, b), rtol=op.rtol,
                         atol=1e-5 + 1e-5 * K ** 0.5)


@each_op
def test_threads_split_the_output_features(op, isa):
    old = torch.get_num_threads()
    x, weight, b = _args(op, (3, 256), 1000)
    try:
        torch.set_num_threads(2)
        two = op.call(x, *weight, b)
        torch.set_num_threads(1)
        one = op.call(x, *weight, b)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)  # each output is one thread's sum in the same order


@each_op
def test_empty_and_k_zero(op):
    x, weight, b = _args(op, (0, 8), 4)
    assert op.call(x, *weight, b).shape == (0, 4)
    x, weight, b = _args(op, (2, 0), 3)
    assert_close(op.call(x, *weight, b), b.expand(2, 3))


@each_op
def test_gradients_flow_straight_through_x_and_bias(op):
    x, weight, b = _args(op, (4, 24), 10)
    x.requires_grad_(True)
    b.requires_grad_(True)
    g = torch.randn(4, 10)
    op.call(x, *weight, b).backward(g)
    gx, gb = x.grad.clone(), b.grad.clone()
    x.grad = b.grad = None
    F.linear(x, op.float_weight(*weight), b).backward(g)
    assert_close(gx, x.grad)
    assert_close(gb, b.grad)


@each_op
@pytest.mark.parametrize("rows", [3, 33])  # our kernel, the library's GEMM
def test_out_is_written_in_place(op, rows, isa):
    x, weight, b = _args(op, (2, rows, 40), 24)
    out = torch.empty(2, rows, 24)
    assert op.call(x, *weight, b, out=out) is out
    _assert_matches(op, out, x, weight, b)


@each_op
def test_out_may_be_the_input(op):
    x, weight, b = _args(op, (3, 16), 16)
    expected = op.reference(x, *weight, b)
    op.call(x, *weight, b, out=x)  # out overwrites x: computed through a temporary
    assert_close(x, expected, rtol=1e-5, atol=1e-4)


@each_op
def test_out_with_autograd_records_the_gradient(op):
    x, weight, b = _args(op, (3, 20), 9)
    x.requires_grad_(True)
    op.call(x, *weight, b, out=torch.empty(3, 9)).sum().backward()
    assert_close(x.grad, op.float_weight(*weight).sum(0).expand(3, 20))


@each_op
def test_opcheck(op):
    x, weight, b = _args(op, (3, 20), 9)
    variants = getattr(ops, op.name), getattr(ops, f"{op.name}_out"), getattr(ops, f"{op.name}_inference")
    torch.library.opcheck(variants[0].default, (x, *weight, b))
    torch.library.opcheck(variants[1].default, (x, *weight, b), {"out": torch.empty(3, 9)})
    torch.library.opcheck(variants[0].default, (x.clone().requires_grad_(), *weight, b))
    torch.library.opcheck(variants[2].default, (x, *weight, None))


def _bad_call(op, device="cpu", x=None, w=None, bias=None, out=None, extra=()):
    xx, weight, b = _args(op, (3, 20), 9)
    weight = (w if w is not None else weight[0], *weight[1:])
    args = [x if x is not None else xx, *weight, bias if bias is not None else b]
    to = (lambda t: t.to(device) if isinstance(t, torch.Tensor) else t)
    return op.call(*map(to, args), out=to(out))


BAD = [  # (changes, what the CPU kernel says, what the fake says on meta): the same refusals;
    # on meta a wrong dtype is named by the wrapper, as the kernel names it on the CPU
    (dict(x=torch.randn(3, 19)), "size mismatch", "invalid sizes"),
    (dict(x=torch.randn(3, 20, dtype=torch.float64)), "'x' must have dtype Float", None),
    (dict(x=torch.tensor(1.0)), "'x' must have at least 1", "invalid 'x'"),
    (dict(w=torch.zeros(9, 20)), "must have dtype {dtype}", None),
    (dict(w=torch.zeros(9, 20, 1)), "must have dtype {dtype}|must be 2-D", None),
    (dict(bias=torch.ones(10)), "'bias' must have shape", "invalid 'bias'"),
    (dict(out=torch.empty(3, 8)), "'out' must have shape", "invalid 'out'"),
    (dict(out=torch.empty(9, 3).t()), "'out' must be contiguous", "invalid 'out'"),
]


@each_op
@pytest.mark.parametrize("changes, match, meta_match", BAD)
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_bad_input(op, changes, match, meta_match, device):
    if device == "meta" and meta_match is not None:
        match = meta_match
    with pytest.raises((RuntimeError, ValueError), match=match.format(dtype=op.weight_dtype)):
        _bad_call(op, device=device, **changes)


@each_op
def test_a_transposed_weight_is_refused(op):
    _, weight, _ = _args(op, (3, 20), 9)
    with pytest.raises((RuntimeError, ValueError), match="must be contiguous"):
        _bad_call(op, w=weight[0].t().contiguous().t())


@each_op
def test_not_a_tensor(op):
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        _bad_call(op, w=[1, 2])


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(list(OPS)), M=st.integers(1, 40), K=st.integers(1, 300),
       N=st.integers(1, 40), bias=st.booleans(), isa_name=st.sampled_from(ISAS),
       seed=st.integers(0, 2**16))
def test_fuzz_matches_reference(name, M, K, N, bias, isa_name, seed):
    op = OPS[name]
    x, weight, b = _args(op, (M, K), N, bias, seed)
    with use_isa(isa_name):
        y = op.call(x, *weight, b)
    _assert_matches(op, y, x, weight, b)
