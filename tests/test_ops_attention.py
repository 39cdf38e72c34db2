"""Fused causal attention custom op (csrc/attention.cpp) against its PyTorch reference."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from helpers import INT_EXTREMES, ops_binding_or_skip

_binding = ops_binding_or_skip("_attention")
attention, attention_reference = _binding.attention, _binding.attention_reference
ops = torch.ops.smallmind

from ops_isa import ISAS, isa, use_isa  # noqa: E402,F401 (isa: a fixture)


CASES = [  # (B, nh, Tq, Tk, hs, q_offset)
    (1, 8, 128, 128, 32, 0),   # seed prefill
    (1, 8, 1, 128, 32, 127),   # seed decode
    (2, 3, 5, 9, 7, 4),        # odd everything, hs < 8
    (1, 2, 1, 33, 13, 32),     # hs not a multiple of 8
    (3, 2, 17, 17, 64, 0),
    (1, 1, 1, 1, 1, 0),        # size 1
    (1, 2, 300, 300, 16, 0),   # more keys than one online-softmax block (256)
    (2, 2, 3, 20, 24, 10),     # a chunk in the middle of a cache
    (1, 2, 4, 30, 40, 26),     # hs = 40: whole 16-wide vectors and a tail
]


def _qkv(b, nh, tq, tk, hs, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, nh, tq, hs, generator=g) * scale, torch.randn(b, nh, tk, hs, generator=g),
            torch.randn(b, nh, tk, hs, generator=g))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_matches_reference(case, isa):
    b, nh, tq, tk, hs, off = case
    q, k, v = _qkv(b, nh, tq, tk, hs)
    ref = attention_reference(q, k, v, off)
    torch.testing.assert_close(attention(q, k, v, off), ref)
    out = torch.empty(b, nh, tq, hs)
    assert attention(q, k, v, off, out=out) is out
    torch.testing.assert_close(out, ref)


def test_matches_sdpa_prefill(isa):
    q, k, v = _qkv(2, 4, 19, 19, 24, seed=1)
    torch.testing.assert_close(attention(q, k, v),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_kv_cache_views_and_strided_out(isa):
    """k/v as slices of a (max_B, nh, max_T, hs) cache, out as a (B, T, nh, hs) transpose."""
    torch.manual_seed(2)
    max_b, nh, max_t, hs = 3, 4, 40, 16
    k_cache = torch.randn(max_b, nh, max_t, hs)
    v_cache = torch.randn(max_b, nh, max_t, hs)
    for b, tq, tk in [(2, 7, 7), (2, 1, 25), (1, 4, 30), (3, 1, 1)]:
        off = tk - tq
        k, v = k_cache[:b, :, :tk], v_cache[:b, :, :tk]
        assert not k.is_contiguous()
        q = torch.randn(b, tq, nh, hs).transpose(1, 2)  # (B, nh, Tq, hs) view of (B, T, nh, hs)
        ref = attention_reference(q, k.contiguous(), v.contiguous(), off)
        torch.testing.assert_close(attention(q, k, v, off), ref)
        y = torch.full((b, tq, nh * hs), float("nan"))  # the model's (B, T, C) buffer
        out = y.view(b, tq, nh, hs).transpose(1, 2)
        attention(q, k, v, off, out=out)
        torch.testing.assert_close(y, ref.transpose(1, 2).reshape(b, tq, nh * hs))
    # a fully strided out (last dim not contiguous) goes through a temporary
    q, k, v = _qkv(1, 2, 5, 5, 8)
    out = torch.empty(1, 2, 8, 5).transpose(-1, -2)
    attention(q, k, v, out=out)
    torch.testing.assert_close(out, attention_reference(q, k, v))


def test_extreme_scores_are_finite_and_exact_for_a_dominant_key(isa):
    # scores of order 1e4: each row's softmax is one-hot on its largest score
    torch.manual_seed(3)
    q, k, v = _qkv(1, 2, 9, 9, 16, scale=400.0)
    out = attention(q, k, v)
    assert torch.isfinite(out).all()
    s = (q @ k.transpose(-1, -2)) / 4.0
    assert s.abs().max() > 1e3
    ref64 = attention_reference(q.double(), k.double(), v.double()).float()
    torch.testing.assert_close(out, ref64, rtol=1e-5, atol=1e-5)
    # row 0 attends only key 0
    torch.testing.assert_close(out[:, :, 0], v[:, :, 0], rtol=0, atol=0)


@pytest.mark.parametrize("case", [(2, 3, 5, 9, 7, 4), (1, 2, 12, 12, 16, 0), (1, 1, 1, 6, 8, 5),
                                  (1, 2, 40, 300, 8, 260)], ids=str)
def test_grads_match_reference(case, isa):
    b, nh, tq, tk, hs, off = case
    q, k, v = (t.requires_grad_() for t in _qkv(b, nh, tq, tk, hs, seed=4))
    g = torch.randn(b, nh, tq, hs)
    attention(q, k, v, off).backward(g)
    qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
    attention_reference(qr, kr, vr, off).backward(g)
    for got, want in ((q.grad, qr.grad), (k.grad, kr.grad), (v.grad, vr.grad)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_grads_through_cache_views(isa):
    cache = torch.randn(2, 2, 30, 8, requires_grad=True)
    k = cache[:, :, :11]
    v = cache[:, :, 11:22]
    q = torch.randn(2, 2, 3, 8, requires_grad=True)
    g = torch.randn(2, 2, 3, 8)
    attention(q, k, v, 8).backward(g)
    cr = cache.detach().clone().requires_grad_()
    qr = q.detach().clone().requires_grad_()
    attention_reference(qr, cr[:, :, :11], cr[:, :, 11:22], 8).backward(g)
    torch.testing.assert_close(cache.grad, cr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q.grad, qr.grad, rtol=1e-5, atol=1e-5)


NAIVE_CASES = [  # (B, nh, Tq, Tk, hs, q_offset): head sizes about the vector widths (16, 8, 1),
    # 8-key score blocks whole and cut, a decode row, more keys than a 256-key block
    (1, 1, 1, 1, 1, 0), (1, 2, 3, 5, 7, 2), (2, 1, 2, 9, 8, 7), (1, 1, 4, 4, 16, 0),
    (1, 2, 1, 20, 17, 19), (1, 1, 3, 40, 32, 20), (1, 1, 2, 300, 33, 298),
]


def test_matches_naive_loop(isa):
    """The forward on this ISA against its naive loop (attention_kernel.h's attention_naive)."""
    for b, nh, tq, tk, hs, off in NAIVE_CASES:
        q, k, v = _qkv(b, nh, tq, tk, hs)
        torch.testing.assert_close(attention(q, k, v, off),
                                   torch.ops.smallmind_naive.attention(q, k, v, off))


def test_opcheck():
    q, k, v = _qkv(2, 2, 3, 7, 5)
    torch.library.opcheck(ops.attention.default, (q, k, v, 4))
    torch.library.opcheck(ops.attention_inference.default, (q, k, v, 4))
    torch.library.opcheck(ops.attention.default,
                          tuple(t.clone().requires_grad_() for t in (q, k, v)) + (4,))
    cache = torch.randn(3, 2, 10, 5)
    torch.library.opcheck(ops.attention.default, (q, cache[:2, :, :7], cache[1:, :, 2:9], 4))
    torch.library.opcheck(ops.attention_inference.default,
                          (q, cache[:2, :, :7], cache[1:, :, 2:9], 4))
    torch.library.opcheck(ops.attention_out.default, (q, k, v, 4, torch.empty(2, 2, 3, 5)))
    buf = torch.empty(2, 3, 10)
    torch.library.opcheck(ops.attention_out.default,
                          (q, k, v, 4, buf.view(2, 3, 2, 5).transpose(1, 2)))
    torch.library.opcheck(ops.attention_backward.default, (torch.randn(2, 2, 3, 5), q, k, v, 4))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def f(q, k_cache, v_cache, y):
        b, nh, tq, hs = q.shape
        tk = 6
        k, v = k_cache[:b, :, :tk], v_cache[:b, :, :tk]
        a = attention(q, k, v, tk - tq)
        attention(q, k, v, tk - tq, out=y.view(b, tq, nh, hs).transpose(1, 2))
        return a, y

    q = torch.randn(1, 2, 2, 8)
    kc, vc = torch.randn(2, 2, 10, 8), torch.randn(2, 2, 10, 8)
    y = torch.empty(1, 2, 16)
    a, y2 = torch.compile(f, fullgraph=True, backend="aot_eager")(q, kc, vc, y)
    ref = attention_reference(q, kc[:1, :, :6], vc[:1, :, :6], 4)
    torch.testing.assert_close(a, ref)
    torch.testing.assert_close(y, ref.transpose(1, 2).reshape(1, 2, 16))

    def loss(q, k, v):
        return attention(q, k, v).square().sum()

    q, k, v = (t.requires_grad_() for t in _qkv(1, 2, 5, 5, 8))
    torch.compile(loss, fullgraph=True, backend="aot_eager")(q, k, v).backward()
    qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
    attention_reference(qr, kr, vr).square().sum().backward()
    torch.testing.assert_close(k.grad, kr.grad, rtol=1e-5, atol=1e-5)


def _score_error_bound(q, k):
    """Worst-case float32 rounding of the scores: hs * eps * sum_d |q_d k_d| / sqrt(hs)."""
    hs = q.shape[-1]
    return (q.abs() @ k.abs().transpose(-1, -2)).max().item() / math.sqrt(hs) * hs * 6e-8


@settings(max_examples=50, deadline=None)
@given(b=st.integers(1, 2), nh=st.integers(1, 3), tq=st.integers(1, 10), extra=st.integers(0, 12),
       off_frac=st.floats(0, 1), hs=st.integers(1, 40),
       qscale=st.sampled_from([1.0, 10.0, 2000.0]), seed=st.integers(0, 2**16),
       isa=st.sampled_from(ISAS))
def test_property_matches_reference(b, nh, tq, extra, off_frac, hs, qscale, seed, isa):
    with use_isa(isa):
        _property_matches_reference(b, nh, tq, extra, off_frac, hs, qscale, seed)


def _property_matches_reference(b, nh, tq, extra, off_frac, hs, qscale, seed):
    tk = tq + extra
    off = int(round(off_frac * extra))
    q, k, v = _qkv(b, nh, tq, tk, hs, seed=seed, scale=qscale)
    out = attention(q, k, v, off)
    assert torch.isfinite(out).all()
    if qscale == 1.0:
        torch.testing.assert_close(out, attention_reference(q, k, v, off))
    else:
        # scores up to ~1e4: the result is ill-conditioned in the scores, so compare with the
        # float64 result within what float32 rounding of the scores alone can move it
        ref64 = attention_reference(q.double(), k.double(), v.double(), off).float()
        atol = 1e-5 + 2 * _score_error_bound(q, k) * v.abs().max().item()
        torch.testing.assert_close(out, ref64, rtol=1e-5, atol=atol)
    # row 0 (when q_offset = 0) attends one key only: exactly v_0
    if off == 0:
        torch.testing.assert_close(out[:, :, 0], v[:, :, 0], rtol=0, atol=0)


def test_bad_inputs():
    q, k, v = _qkv(1, 2, 3, 5, 4)
    with pytest.raises(RuntimeError, match="float32"):
        attention(q.double(), k, v)
    with pytest.raises(RuntimeError, match="4-D"):
        attention(q[0], k, v)
    with pytest.raises(RuntimeError, match="same shape"):
        attention(q, k, v[:, :, :4])
    with pytest.raises(RuntimeError, match="agree on B, nh"):
        attention(q[:, :1], k, v)
    with pytest.raises(RuntimeError, match="agree on B, nh"):
        attention(torch.randn(1, 2, 3, 6), k, v)
    with pytest.raises(ValueError, match="q_offset"):
        attention(q, k, v, 3)  # 3 + 3 > 5
    with pytest.raises(ValueError, match="q_offset"):
        attention(q, k, v, -1)
    with pytest.raises(ValueError, match="q_offset"):
        attention(torch.randn(1, 2, 6, 4), k, v)  # Tq > Tk
    with pytest.raises(RuntimeError, match="out'? must have shape"):
        attention(q, k, v, out=torch.empty(1, 2, 3, 5))
    with pytest.raises(RuntimeError, match="autograd"):
        attention(q.clone().requires_grad_(), k, v, out=torch.empty(1, 2, 3, 4))
    with pytest.raises(TypeError, match="q_offset"):
        attention(q, k, v, 1.5)
    with pytest.raises(TypeError, match="q_offset"):
        attention(q, k, v, True)
    with pytest.raises(TypeError, match="'k' must be a torch.Tensor"):
        attention(q, k.tolist(), v)
    with pytest.raises(RuntimeError, match="'out' must have dtype Float"):
        attention(q, k, v, out=torch.empty(1, 2, 3, 4, dtype=torch.float64))
    # the C++ checks, reached without the Python wrapper
    with pytest.raises(ValueError, match="q_offset"):
        ops.attention(q, k, v, 3)
    with pytest.raises(RuntimeError, match="Float|float32"):
        ops.attention(q.half(), k, v, 0)
    with pytest.raises(RuntimeError, match="4-D"):
        ops.attention(q, k[0], v, 0)
    with pytest.raises(RuntimeError, match="shape"):
        ops.attention_out(q, k, v, 0, torch.empty(3, 4))
    with pytest.raises(RuntimeError, match="overlap"):
        ops.attention_out(q, k, v, 0, q)


def test_out_sharing_memory_with_an_input_is_refused():
    """Also strided views, whose overlap ATen calls too hard to tell (they were trusted)."""
    buf = torch.randn(1, 3, 2, 8)            # (B, T, nh, hs): q read as a transposed view
    q = buf.transpose(1, 2)                  # (B, nh, T, hs), strided
    k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    for out in (q, buf.transpose(1, 2)[:, :, :, :], k[:, :, 1:4], v[:, :, :3]):
        with pytest.raises(RuntimeError, match="must not overlap q, k or v"):
            attention(q, k, v, 2, out=out.detach())
    attention(q, k, v, 2, out=torch.empty(1, 3, 2, 8).transpose(1, 2))  # separate: fine


# D1: `q_offset + Tq <= Tk` overflowed int64 near 2**63: out-of-bounds reads, a segfault.
@pytest.mark.parametrize("q_offset", [2**63 - 3, 2**63 - 1, 2**62, -1, -2**63, 3])
def test_q_offset_extremes_raise(q_offset):
    q, k, v = _qkv(1, 2, 3, 5, 4)
    g = torch.randn(1, 2, 3, 4)
    for device in ("cpu", "meta"):  # the fakes refuse what the kernel refuses (D13)
        qd, kd, vd, gd = (t.to(device) for t in (q, k, v, g))
        calls = [lambda: ops.attention(qd, kd, vd, q_offset),
                 lambda: ops.attention_inference(qd, kd, vd, q_offset),
                 lambda: ops.attention_out(qd, kd, vd, q_offset, torch.empty_like(qd)),
                 lambda: ops.attention_backward(gd, qd, kd, vd, q_offset)]
        for call in calls:
            with pytest.raises(ValueError, match="q_offset must satisfy" if device == "cpu"
                               else "invalid q_offset"):
                call()
    with pytest.raises(ValueError, match="q_offset must satisfy"):
        attention(q, k, v, q_offset)


def test_fakes_refuse_what_the_kernel_refuses():
    """The CPU kernel's message names the problem; the fake (meta) refuses the same input,
    naming only the argument."""
    q, k, v = _qkv(1, 2, 3, 5, 4)
    cases = [((q[:, :1], k, v, 0), "agree on B, nh", "sizes"),
             ((torch.randn(1, 2, 3, 6), k, v, 0), "hs", "sizes"),
             ((q, k, v[:, :, :4], 0), "same shape", "sizes"), ((q[0], k, v, 0), "4-D", "'q'"),
             ((q, k.double(), v, 0), "'k' must have dtype Float", "'k'"),
             ((torch.randn(1, 2, 6, 4), k, v, 0), "q_offset", "q_offset")]
    for args, match, what in cases:
        for op in (ops.attention, ops.attention_inference):
            with pytest.raises((RuntimeError, ValueError), match=match):
                op(*args)
            with pytest.raises((RuntimeError, ValueError), match=f"invalid {what}"):
                op(*(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args))
    for out in (torch.empty(1, 2, 3, 5), torch.empty(1, 2, 3, 4, dtype=torch.float64)):
        for device in ("cpu", "meta"):
            with pytest.raises(RuntimeError, match="'out' must have" if device == "cpu"
                               else "invalid 'out'"):
                ops.attention_out(q.to(device), k.to(device), v.to(device), 2, out.to(device))
    for device in ("cpu", "meta"):
        with pytest.raises(RuntimeError, match="'grad_out' must have shape" if device == "cpu"
                           else "invalid 'grad_out'"):
            ops.attention_backward(torch.randn(1, 2, 3, 5, device=device), q.to(device),
                                   k.to(device), v.to(device), 2)


# D7: a NaN key took all the probability mass (exp256 clamped NaN to e^88); torch gives NaN.
# Keys 3 / 18 / 26 of 28: the 16-wide loop, the 8-wide loop and the scalar tail of the row
# kernels; 300 keys cross the 256-key online-softmax block.
@pytest.mark.parametrize("tk, pos", [(28, 3), (28, 18), (28, 26), (300, 280), (300, 5)])
@pytest.mark.parametrize("where", ["k", "q", "v"])
def test_nan_matches_reference(tk, pos, where, isa):
    q, k, v = _qkv(1, 2, 2, tk, 16, seed=pos)
    t = {"q": q, "k": k, "v": v}[where]
    t[0, 1, min(pos, t.shape[2] - 1), 5] = float("nan")
    got = attention(q, k, v, tk - 2)
    ref = attention_reference(q, k, v, tk - 2)
    assert ref.isnan().any()
    torch.testing.assert_close(got, ref, equal_nan=True)
    q2, k2, v2 = (x.clone().requires_grad_() for x in (q, k, v))  # the backward kernel too
    attention(q2, k2, v2, tk - 2).sum().backward()
    assert q2.grad.isnan().any()


def test_minus_inf_and_inf_scores_match_reference(isa):
    q, k, v = _qkv(1, 1, 1, 300, 8)
    q[...] = 1.0
    k[...] = 0.0
    k[0, 0, :260, 0] = float("-inf")  # the whole first 256-key block is -inf
    got, ref = attention(q, k, v, 299), attention_reference(q, k, v, 299)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(got, ref)
    k[0, 0, :, 0] = float("-inf")     # every key -inf: NaN, as torch
    torch.testing.assert_close(attention(q, k, v, 299), attention_reference(q, k, v, 299),
                               equal_nan=True)
    k[0, 0, 7, 0] = float("inf")      # a +inf score: inf - inf = NaN, as torch
    torch.testing.assert_close(attention(q, k, v, 299), attention_reference(q, k, v, 299),
                               equal_nan=True)


@settings(max_examples=40, deadline=None)
@given(tq=st.integers(1, 4), tk_extra=st.integers(0, 5), hs=st.integers(1, 9),
       which=st.sampled_from(["q", "k", "v"]), start=st.integers(0, 200),
       seed=st.integers(0, 2**16))
def test_property_out_aliasing(tq, tk_extra, hs, which, start, seed):
    """out anywhere in the buffer that holds q, k or v: the right answer or a clear refusal,
    never a silently wrong one."""
    tk, nh = tq + tk_extra, 2
    g = torch.Generator().manual_seed(seed)
    shapes = {"q": (1, nh, tq, hs), "k": (1, nh, tk, hs), "v": (1, nh, tk, hs)}
    n = 1 * nh * max(tq, tk) * hs
    buf = torch.randn(3 * n + 200, generator=g)
    t = {}
    for i, name in enumerate("qkv"):
        numel = torch.Size(shapes[name]).numel()
        t[name] = buf[i * n:i * n + numel].view(shapes[name]) if name == which else \
            torch.randn(shapes[name], generator=g)
    expected = attention_reference(t["q"], t["k"], t["v"], tk - tq)
    numel = nh * tq * hs
    start = min(start, buf.numel() - numel)
    out = buf[start:start + numel].view(1, nh, tq, hs)
    try:
        attention(t["q"], t["k"], t["v"], tk - tq, out=out)
    except RuntimeError as exc:
        assert "must not overlap q, k or v" in str(exc)
        return
    torch.testing.assert_close(out, expected)


@settings(max_examples=60, deadline=None)
@given(tq=st.integers(0, 5), tk=st.integers(0, 9),
       q_offset=st.one_of(st.sampled_from(INT_EXTREMES), st.integers(-3, 12)),
       use_out=st.booleans(), seed=st.integers(0, 2**16))
def test_property_any_q_offset(tq, tk, q_offset, use_out, seed):
    """Every int64 q_offset (and sizes 0): the reference's answer, or a ValueError."""
    q, k, v = _qkv(1, 2, tq, tk, 8, seed=seed)
    out = torch.empty(1, 2, tq, 8) if use_out else None
    if not (tq <= tk and 0 <= q_offset <= tk - tq):
        with pytest.raises(ValueError, match="q_offset"):
            attention(q, k, v, q_offset, out=out)
        with pytest.raises(ValueError, match="q_offset"):
            ops.attention(q.to("meta"), k.to("meta"), v.to("meta"), q_offset)
        return
    got = attention(q, k, v, q_offset, out=out)
    if tq > 0:
        torch.testing.assert_close(got, attention_reference(q, k, v, q_offset))


def test_cuda_fake_tensors_rejected_naming_the_argument():
    """What torch.compile sees for CUDA inputs (FakeTensors on cuda, no GPU needed)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(1, 1, 2, 4)
        with pytest.raises(RuntimeError, match="'v' is on cuda:0, .* CPU kernels only"):
            attention(q, q, torch.empty(1, 1, 2, 4, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rejected():
    q, k, v = (t.cuda() for t in _qkv(1, 1, 2, 2, 4))
    with pytest.raises(RuntimeError, match="CPU"):
        attention(q, k, v)
