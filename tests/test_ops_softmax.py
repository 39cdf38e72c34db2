"""Fused causal softmax custom op (csrc/softmax.cpp) against its PyTorch reference."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from helpers import ops_binding_or_skip

_binding = ops_binding_or_skip("_softmax")
causal_softmax, causal_softmax_ = _binding.causal_softmax, _binding.causal_softmax_
causal_softmax_reference = _binding.causal_softmax_reference
ops = torch.ops.smallmind

from ops_isa import ISAS, isa, use_isa  # noqa: E402,F401 (isa: a fixture)

# every int argument is fuzzed at these values too (C++ int64 extremes, overflow bait)
INT_EXTREMES = [0, -1, 1, 2**31, 2**62, 2**63 - 3, 2**63 - 1, -2**63]

CASES = [  # (dims, q_offset)
    ((1, 8, 128, 128), 0),   # seed prefill
    ((2, 3, 5, 7), 2),       # odd sizes, q_offset > 0
    ((4, 1, 1, 9), 8),       # decode row against a 9-long cache
    ((3, 17, 17), 0),        # 3-D, odd
    ((1, 1), 0),             # size 1
    ((2, 2, 13, 40), 27),
]


@pytest.mark.parametrize("dims,q_offset", CASES)
def test_matches_reference(dims, q_offset, isa):
    torch.manual_seed(0)
    x = torch.randn(dims) * 3
    ref = causal_softmax_reference(x, q_offset)
    torch.testing.assert_close(causal_softmax(x, q_offset), ref)
    y = x.clone()
    assert causal_softmax_(y, q_offset) is y
    torch.testing.assert_close(y, ref)


def test_masked_tail_is_ignored_and_zeroed(isa):
    torch.manual_seed(1)
    x = torch.randn(2, 6, 6)
    ref = causal_softmax_reference(x)
    garbage = x.clone()
    mask = torch.ones(6, 6, dtype=torch.bool).triu(1)
    garbage[:, mask] = float("nan")
    out = causal_softmax(garbage)
    torch.testing.assert_close(out, ref)
    assert (out[:, mask] == 0).all()
    garbage[:, mask] = float("-inf")
    causal_softmax_(garbage)
    torch.testing.assert_close(garbage, ref)


def test_non_contiguous_views(isa):
    torch.manual_seed(2)
    # transposed: last dim not contiguous
    base = torch.randn(2, 3, 11, 9)
    x = base.transpose(-1, -2)  # (2, 3, 9, 11)
    torch.testing.assert_close(causal_softmax(x, 2), causal_softmax_reference(x, 2))
    # slice of a bigger buffer (rows strided, last dim contiguous), leading dims permuted
    big = torch.randn(3, 4, 16, 20)
    view = big[:, :, :5, :12].permute(1, 0, 2, 3)
    ref = causal_softmax_reference(view, 7)
    torch.testing.assert_close(causal_softmax(view, 7), ref)
    before = big.clone()
    causal_softmax_(view, 7)  # in place through the view
    torch.testing.assert_close(big[:, :, :5, :12], ref.permute(1, 0, 2, 3))
    torch.testing.assert_close(big[:, :, 5:], before[:, :, 5:])  # nothing else touched
    torch.testing.assert_close(big[:, :, :, 12:], before[:, :, :, 12:])
    # in place on a transposed view writes back through it
    base2 = torch.randn(2, 11, 9)
    v2 = base2.transpose(-1, -2)
    ref2 = causal_softmax_reference(v2, 2)
    causal_softmax_(v2, 2)
    torch.testing.assert_close(v2, ref2)


def test_extreme_logits(isa):
    x = torch.tensor([[1e4, -1e4, 1e4, 0.0], [-1e4, -1e4, 1e4, 3.0],
                      [1e4, 1e4, -1e4, 1e4], [-1e4, 1e4, -1e4, -1e4]]).expand(2, 4, 4).contiguous()
    out = causal_softmax(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, causal_softmax_reference(x))
    assert (out[:, 0, 0] == 1.0).all()  # a row with a single valid entry is exactly 1


@pytest.mark.parametrize("dims,q_offset", [((2, 3, 5, 7), 2), ((1, 2, 9, 9), 0), ((1, 1), 0)])
def test_grad_matches_reference(dims, q_offset, isa):
    torch.manual_seed(3)
    x = torch.randn(dims, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    g = torch.randn(dims)
    causal_softmax(x, q_offset).backward(g)
    causal_softmax_reference(x_ref, q_offset).backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad)


@pytest.mark.filterwarnings("ignore:Input #0 requires gradient")
def test_gradcheck_float32():
    x = torch.randn(2, 4, 6, dtype=torch.float32, requires_grad=True)
    # float32 gradcheck with loose tolerances (the kernel is float32-only)
    assert torch.autograd.gradcheck(lambda t: causal_softmax(t, 2), (x,), eps=1e-2,
                                    atol=1e-2, rtol=1e-2)


NAIVE_CASES = [  # (dims, q_offset): valid lengths about the vector widths (16, 8, 1) and twice
    ((1, 1), 0), ((3, 5), 2), ((1, 5, 9), 4), ((2, 3, 17), 14), ((1, 2, 16), 14),
    ((2, 3, 40), 37), ((1, 4, 100), 96),
]


def test_matches_naive_loop(isa):
    """Both forms on this ISA against the naive loop (attention_kernel.h's causal_softmax_naive)."""
    for dims, q_offset in NAIVE_CASES:
        x = torch.randn(dims) * 3
        naive = torch.ops.smallmind_naive.causal_softmax(x, q_offset)
        torch.testing.assert_close(causal_softmax(x, q_offset), naive)
        y = x.clone()
        torch.testing.assert_close(causal_softmax_(y, q_offset), naive)


def test_opcheck():
    x = torch.randn(2, 3, 5, 7)
    torch.library.opcheck(ops.causal_softmax.default, (x, 2))
    torch.library.opcheck(ops.causal_softmax.default, (torch.randn(3, 4, 4, requires_grad=True),))
    torch.library.opcheck(ops.causal_softmax_inference.default, (x, 2))
    torch.library.opcheck(ops.causal_softmax_inference.default, (torch.randn(3, 4, 4),))
    torch.library.opcheck(ops.causal_softmax_.default, (x.clone(), 2))


def test_inference_twin_skips_autograd():
    x = torch.randn(2, 4, 4)
    y = causal_softmax(x.clone().requires_grad_())
    assert y.requires_grad and y.grad_fn is not None
    with torch.no_grad():
        assert not causal_softmax(x.clone().requires_grad_()).requires_grad
    torch.testing.assert_close(ops.causal_softmax_inference(x, 0), causal_softmax_reference(x))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def f(x):
        y = causal_softmax(x * 2.0, 1)
        z = x.clone()
        causal_softmax_(z, 1)
        return y + z

    x = torch.randn(2, 5, 6)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    expected = causal_softmax_reference(x * 2.0, 1) + causal_softmax_reference(x, 1)
    torch.testing.assert_close(compiled(x), expected)


@settings(max_examples=60, deadline=None)
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
       tq=st.integers(1, 12), extra=st.integers(0, 20), off_frac=st.floats(0, 1),
       scale=st.sampled_from([1.0, 30.0, 1e4]), seed=st.integers(0, 2**16),
       isa=st.sampled_from(ISAS))
def test_property_matches_reference(lead, tq, extra, off_frac, scale, seed, isa):
    with use_isa(isa):
        _property_matches_reference(lead, tq, extra, off_frac, scale, seed)


def _property_matches_reference(lead, tq, extra, off_frac, scale, seed):
    tk = tq + extra
    q_offset = int(round(off_frac * extra))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, tq, tk, generator=g) * scale
    out = causal_softmax(x, q_offset)
    ref = causal_softmax_reference(x, q_offset)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref)
    sums = out.sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums))


@settings(max_examples=80, deadline=None)
@given(tq=st.integers(0, 6), tk=st.integers(0, 9),
       q_offset=st.one_of(st.sampled_from(INT_EXTREMES), st.integers(-3, 12)),
       inplace=st.booleans(), nan_at=st.one_of(st.none(), st.integers(0, 8)),
       seed=st.integers(0, 2**16), isa=st.sampled_from(ISAS))
def test_property_any_q_offset_and_non_finite(tq, tk, q_offset, inplace, nan_at, seed, isa):
    """Every int64 q_offset (and sizes 0): the reference's answer, or a ValueError."""
    with use_isa(isa):
        _property_any_q_offset_and_non_finite(tq, tk, q_offset, inplace, nan_at, seed)


def _property_any_q_offset_and_non_finite(tq, tk, q_offset, inplace, nan_at, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, tq, tk, generator=g)
    if nan_at is not None and tk > 0:
        x[..., min(nan_at, tk - 1)] = float("nan")
    valid = 0 <= tq <= tk and 0 <= q_offset <= tk - tq
    fn = causal_softmax_ if inplace else causal_softmax
    if not valid:
        with pytest.raises(ValueError, match="q_offset"):
            fn(x.clone(), q_offset)
        with pytest.raises(ValueError, match="q_offset"):
            fn(x.to("meta"), q_offset)
        return
    got = fn(x.clone(), q_offset)
    torch.testing.assert_close(got, causal_softmax_reference(x, q_offset), equal_nan=True)


# ---- bad input: clear errors, never a crash ----

def test_bad_inputs():
    with pytest.raises(RuntimeError, match="float32"):
        causal_softmax(torch.randn(3, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="float32"):
        causal_softmax(torch.ones(3, 3, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="at least 2"):
        causal_softmax(torch.randn(5))
    with pytest.raises(ValueError, match="q_offset"):
        causal_softmax(torch.randn(4, 5), 2)  # 2 + 4 > 5
    with pytest.raises(ValueError, match="q_offset"):
        causal_softmax_(torch.randn(4, 5), -1)
    with pytest.raises(ValueError, match="q_offset"):
        causal_softmax(torch.randn(5, 4))  # Tq > Tk
    with pytest.raises(RuntimeError, match="in-place"):
        causal_softmax_(torch.randn(3, 3, requires_grad=True))
    for bad in (1.5, True, "1", torch.tensor(1)):
        with pytest.raises(TypeError, match="'q_offset' must be an int"):
            causal_softmax(torch.randn(3, 3), bad)
        with pytest.raises(TypeError, match="'q_offset' must be an int"):
            causal_softmax_(torch.randn(3, 3), bad)
    with pytest.raises(TypeError, match="'scores' must be a torch.Tensor"):
        causal_softmax([[1.0]])
    # the C++ checks, reached without the Python wrapper
    with pytest.raises(RuntimeError, match="float32|Float"):
        ops.causal_softmax(torch.ones(3, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="q_offset"):
        ops.causal_softmax(torch.randn(3, 3), 1)
    with pytest.raises(RuntimeError, match="at least 2"):
        ops.causal_softmax_(torch.randn(3), 0)
    with pytest.raises(RuntimeError, match="overlap|more than one element"):
        ops.causal_softmax_(torch.randn(1, 4).expand(4, 4), 0)


# D1: `q_offset + Tq <= Tk` overflowed int64 for q_offset near 2**63 and the kernels read
# (and memset) far out of bounds: a segfault. Each case runs in this process, so a crash
# fails the whole run.
@pytest.mark.parametrize("q_offset", [2**63 - 3, 2**63 - 1, 2**62, -1, -2**63, 2])
@pytest.mark.parametrize("op", ["causal_softmax", "causal_softmax_inference", "causal_softmax_"])
def test_q_offset_extremes_raise(op, q_offset):
    for device, match in (("cpu", "q_offset must satisfy"), ("meta", "invalid q_offset")):
        with pytest.raises(ValueError, match=match):  # the fakes refuse it too (D13)
            getattr(ops, op)(torch.randn(1, 4, 5, device=device), q_offset)
    with pytest.raises(ValueError, match="q_offset must satisfy"):
        (causal_softmax_ if op.endswith("_") else causal_softmax)(torch.randn(1, 4, 5), q_offset)


def test_fakes_refuse_what_the_kernel_refuses():
    """The CPU kernel's message names the problem; the fake (meta) refuses the same input,
    naming only the argument."""
    cases = [((torch.randn(5),), "at least 2", "'scores'"),
             ((torch.randn(2, 4, 4).double(),), "Float", "'scores'"),
             ((torch.randn(2, 5, 4),), "q_offset", "q_offset")]
    for args, match, what in cases:
        for op in (ops.causal_softmax, ops.causal_softmax_inference, ops.causal_softmax_):
            with pytest.raises((RuntimeError, ValueError), match=match):
                op(*args)
            with pytest.raises((RuntimeError, ValueError), match=f"invalid {what}"):
                op(*(a.to("meta") for a in args))


# D7: exp256 clamped NaN to 88 and row_max dropped NaN, so a NaN score in the vectorized part
# of a row gave a finite softmax. Rows of 28 and 53: positions in the two-vector loop, the
# one-vector loop and the scalar tail of the AVX2 (16 / 8-wide) and AVX-512 (32 / 16) forms.
@pytest.mark.parametrize("tk, pos", [(28, 0), (28, 3), (28, 15), (28, 17), (28, 23), (28, 26),
                                     (53, 2), (53, 31), (53, 40), (53, 50)])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_scores_match_reference(tk, pos, value, isa):
    x = torch.randn(2, 3, tk)
    x[0, 2, pos] = value
    ref = causal_softmax_reference(x, tk - 3)
    got = causal_softmax(x, tk - 3)
    assert ref[0, 2].isnan().all()  # torch: NaN for NaN, and inf - inf = NaN for +inf
    torch.testing.assert_close(got, ref, equal_nan=True)
    y = x.clone()
    causal_softmax_(y, tk - 3)
    torch.testing.assert_close(y, ref, equal_nan=True)


def test_minus_inf_scores_match_reference(isa):
    x = torch.randn(2, 20)
    x[0, :] = float("-inf")          # every valid score -inf: 0 / 0 = NaN, as torch
    x[1, [0, 9, 17]] = float("-inf")  # some -inf: probability 0 there
    ref = causal_softmax_reference(x, 18)
    torch.testing.assert_close(causal_softmax(x, 18), ref, equal_nan=True)
    assert ref[0].isnan().all() and (ref[1, [0, 9, 17]] == 0).all()


def test_cuda_fake_tensors_rejected_naming_the_argument():
    """What torch.compile sees for CUDA inputs (FakeTensors on cuda, no GPU needed)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        for fn in (causal_softmax, causal_softmax_):
            with pytest.raises(RuntimeError, match="'scores' is on cuda:0, .* CPU kernels only"):
                fn(torch.empty(4, 4, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rejected():
    with pytest.raises(RuntimeError, match="CPU"):
        causal_softmax(torch.randn(4, 4, device="cuda"))
