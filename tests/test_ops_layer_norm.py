"""Fused LayerNorm custom ops (csrc/layer_norm.cpp) against F.layer_norm."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from helpers import ops_binding_or_skip

_binding = ops_binding_or_skip("_layer_norm")
layer_norm, layer_norm_reference = _binding.layer_norm, _binding.layer_norm_reference
ops = torch.ops.smallmind

from ops_isa import ISAS, isa, use_isa  # noqa: E402,F401 (isa: a fixture)

DIMS = [(1, 128, 256), (2, 3, 7), (5, 1), (3, 300), (1, 1), (4, 17, 33), (9,)]


def _params(c, affine=True):
    if not affine:
        return None, None
    return torch.randn(c) * 0.5 + 1.0, torch.randn(c) * 0.1


@pytest.mark.parametrize("dims", DIMS)
def test_matches_reference(dims, isa):
    torch.manual_seed(0)
    x = torch.randn(dims) * 2 + 0.5
    w, b = _params(dims[-1])
    ref = layer_norm_reference(x, w, b)
    torch.testing.assert_close(layer_norm(x, w, b), ref)
    out = torch.empty(dims)
    assert layer_norm(x, w, b, out=out) is out
    torch.testing.assert_close(out, ref)
    with torch.no_grad():
        torch.testing.assert_close(layer_norm(x, w, b), ref)


@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
def test_optional_affine(affine, isa):
    torch.manual_seed(1)
    x = torch.randn(3, 19)
    w = torch.randn(19) if affine in ("both", "weight") else None
    b = torch.randn(19) if affine in ("both", "bias") else None
    torch.testing.assert_close(layer_norm(x, w, b, 1e-3), layer_norm_reference(x, w, b, 1e-3))


def test_non_contiguous_inputs(isa):
    torch.manual_seed(2)
    w, b = _params(12)
    xt = torch.randn(2, 12, 5).transpose(1, 2)  # (2, 5, 12), last dim strided
    torch.testing.assert_close(layer_norm(xt, w, b), layer_norm_reference(xt, w, b))
    big = torch.randn(4, 6, 20)
    xs = big[1:, ::2, 3:15]  # strided rows, last dim contiguous
    torch.testing.assert_close(layer_norm(xs, w, b), layer_norm_reference(xs, w, b))
    out = torch.empty(xs.shape)
    layer_norm(xs, w, b, out=out)
    torch.testing.assert_close(out, layer_norm_reference(xs, w, b))
    w_nc = torch.randn(24)[::2]  # non-contiguous weight
    torch.testing.assert_close(layer_norm(xt, w_nc, b), layer_norm_reference(xt, w_nc, b))


def test_out_in_place_and_no_allocation_of_x_size():
    torch.manual_seed(3)
    x = torch.randn(4, 33)
    w, b = _params(33)
    ref = layer_norm_reference(x, w, b)
    y = x.clone()
    layer_norm(y, w, b, out=y)  # out aliases x exactly: allowed
    torch.testing.assert_close(y, ref)
    out = torch.empty(4, 33)
    ptr = out.data_ptr()
    layer_norm(x, w, b, out=out)
    assert out.data_ptr() == ptr


def test_large_offset_and_scale(isa):
    torch.manual_seed(4)
    # mean far from 0 relative to the spread: a float32 mean is off by up to ulp(1e3)/2, so
    # every float32 LayerNorm (ATen's too) is off by ~1e-2 here; ours must be no worse.
    x = torch.randn(6, 64) * 1e-2 + 1e3
    w, b = _params(64)
    exact = F.layer_norm(x.double(), (64,), w.double(), b.double())
    err_ours = (layer_norm(x, w, b) - exact).abs().max().item()
    err_aten = (layer_norm_reference(x, w, b) - exact).abs().max().item()
    assert err_ours <= 2 * err_aten + 1e-5, (err_ours, err_aten)
    x = torch.randn(6, 64) * 1e4
    torch.testing.assert_close(layer_norm(x, w, b), layer_norm_reference(x, w, b))


@pytest.mark.parametrize("dims", [(2, 3, 7), (1, 128, 256), (5, 1), (3, 40)])
def test_grads_match_reference(dims, isa):
    torch.manual_seed(5)
    c = dims[-1]
    x = torch.randn(dims, requires_grad=True)
    w = (torch.randn(c) + 1).requires_grad_()
    b = torch.randn(c).requires_grad_()
    g = torch.randn(dims)
    layer_norm(x, w, b).backward(g)
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, b))
    layer_norm_reference(xr, wr, br).backward(g)
    # C = 1: the exact grad of x is 0, both sides return rounding noise times rstd = 1/sqrt(eps)
    tol = 1e-5 if c > 1 else 1e-4
    torch.testing.assert_close(x.grad, xr.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(w.grad, wr.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(b.grad, br.grad, rtol=tol, atol=tol)


def test_grads_plain_op_recomputes_stats_and_no_affine(isa):
    torch.manual_seed(6)
    x = torch.randn(3, 5, 21).transpose(0, 1).requires_grad_()  # non-contiguous leaf
    w = torch.randn(21, requires_grad=True)
    g = torch.randn(5, 3, 21)
    # the inference op also has autograd (backward recomputes mean / rstd)
    torch.ops.smallmind.layer_norm(x, w, None, 1e-5).backward(g)
    xr, wr = (t.detach().clone().requires_grad_() for t in (x, w))
    F.layer_norm(xr, (21,), wr, None).backward(g)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad, wr.grad, rtol=1e-5, atol=1e-5)
    # only x requires grad, no affine parameters
    x2 = torch.randn(4, 9, requires_grad=True)
    layer_norm(x2, None, None).sum().backward()
    x2r = x2.detach().clone().requires_grad_()
    F.layer_norm(x2r, (9,)).sum().backward()
    torch.testing.assert_close(x2.grad, x2r.grad, rtol=1e-5, atol=1e-5)


def test_matches_naive_loop(isa):
    """The forward on this ISA against its naive loop (layer_norm_row.h's layer_norm_naive), for
    rows about the vector widths (16, 8, 1) and twice, with and without the affine part."""
    for c in (1, 7, 8, 15, 16, 17, 31, 32, 33, 100):
        x = torch.randn(3, c) * 2 + 0.5
        for w, b in (_params(c), _params(c, affine=False)):
            torch.testing.assert_close(layer_norm(x, w, b),
                                       torch.ops.smallmind_naive.layer_norm(x, w, b, 1e-5))


def test_opcheck():
    x = torch.randn(3, 5, 7)
    w, b = _params(7)
    torch.library.opcheck(ops.layer_norm.default, (x, w, b, 1e-5))
    torch.library.opcheck(ops.layer_norm_inference.default, (x, w, b, 1e-5))
    torch.library.opcheck(ops.layer_norm_inference.default, (x, None, None, 1e-3))
    torch.library.opcheck(ops.layer_norm.default, (x.clone().requires_grad_(), w.clone().requires_grad_(), None, 1e-5))
    torch.library.opcheck(ops.layer_norm_with_stats.default,
                          (x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_(), 1e-5))
    torch.library.opcheck(ops.layer_norm_out.default, (x, w, b, 1e-5, torch.empty(3, 5, 7)))
    _, mean, rstd = ops.layer_norm_with_stats(x, w, b, 1e-5)
    torch.library.opcheck(ops.layer_norm_backward.default, (torch.randn(3, 5, 7), x, w, mean, rstd, 1e-5))
    torch.library.opcheck(ops.layer_norm_backward.default, (torch.randn(3, 5, 7), x, None, None, None, 1e-5))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    w, b = _params(10)

    def f(x, buf):
        y = layer_norm(x, w, b)
        layer_norm(y * 2, w, None, out=buf)
        return y + buf

    x = torch.randn(3, 10)
    buf = torch.empty(3, 10)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    y_ref = layer_norm_reference(x, w, b)
    torch.testing.assert_close(compiled(x, buf), y_ref + layer_norm_reference(y_ref * 2, w, None))

    def loss(x):  # the autograd path (with saved stats) traces too
        return layer_norm(x, w, b).square().sum()

    xg = torch.randn(3, 10, requires_grad=True)
    torch.compile(loss, fullgraph=True, backend="aot_eager")(xg).backward()
    xr = xg.detach().clone().requires_grad_()
    loss_ref = layer_norm_reference(xr, w, b).square().sum()
    loss_ref.backward()
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-5, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(lead=st.lists(st.integers(1, 4), min_size=0, max_size=2), c=st.integers(1, 70),
       scale=st.sampled_from([1e-2, 1.0, 1e4]), shift=st.sampled_from([0.0, 3.0, -50.0]),
       affine=st.booleans(), seed=st.integers(0, 2**16), isa=st.sampled_from(ISAS))
def test_property_matches_reference(lead, c, scale, shift, affine, seed, isa):
    with use_isa(isa):
        _property_matches_reference(lead, c, scale, shift, affine, seed)


def _property_matches_reference(lead, c, scale, shift, affine, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, c, generator=g) * scale + shift
    w = torch.randn(c, generator=g) if affine else None
    b = torch.randn(c, generator=g) if affine else None
    out = layer_norm(x, w, b)
    assert torch.isfinite(out).all()
    ref = layer_norm_reference(x, w, b)
    if shift == 0.0:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    else:
        # |shift| >> spread: the float32 mean carries ulp(shift)/2, in ATen's result too;
        # judge both against float64 and require ours to be as accurate
        exact = F.layer_norm(x.double(), (c,), None if w is None else w.double(),
                             None if b is None else b.double())
        err_ours = (out - exact).abs().max().item()
        err_aten = (ref - exact).abs().max().item()
        assert err_ours <= 2 * err_aten + 1e-5, (err_ours, err_aten)


def test_bad_inputs():
    x = torch.randn(3, 8)
    w, b = _params(8)
    with pytest.raises(RuntimeError, match="float32"):
        layer_norm(x.double(), w, b)
    with pytest.raises(RuntimeError, match="float32"):
        layer_norm(x, w.half(), b)
    with pytest.raises(RuntimeError, match=r"weight'? must have shape \(8,\)"):
        layer_norm(x, torch.randn(7), b)
    with pytest.raises(RuntimeError, match=r"bias'? must have shape \(8,\)"):
        layer_norm(x, w, torch.randn(8, 1))
    with pytest.raises(RuntimeError, match="at least 1 dim"):
        layer_norm(torch.tensor(1.0), None, None)
    with pytest.raises(RuntimeError, match=r"'out' must have shape \[3, 8\]"):
        layer_norm(x, w, b, out=torch.empty(3, 9))
    with pytest.raises(RuntimeError, match="contiguous"):
        layer_norm(x, w, b, out=torch.empty(8, 3).t())
    with pytest.raises(RuntimeError, match="autograd"):
        layer_norm(x.clone().requires_grad_(), w, b, out=torch.empty(3, 8))
    with pytest.raises(TypeError, match="'x' must be a torch.Tensor"):
        layer_norm([1.0, 2.0], w, b)
    with pytest.raises(TypeError, match="'weight' must be a torch.Tensor or None"):
        layer_norm(x, [1.0] * 8, b)
    for eps in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
            layer_norm(x, w, b, eps)
    # the C++ checks, reached without the Python wrapper
    with pytest.raises(RuntimeError, match="weight"):
        ops.layer_norm(x, torch.randn(3), None, 1e-5)
    with pytest.raises(RuntimeError, match="Float|float32"):
        ops.layer_norm(x.to(torch.int32), None, None, 1e-5)
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.layer_norm_out(x, w, b, 1e-5, torch.empty(8, 3).t())
    with pytest.raises(RuntimeError, match="shape"):
        ops.layer_norm_out(x, w, b, 1e-5, torch.empty(3, 7))
    with pytest.raises(RuntimeError, match="overlap|single memory location"):
        big = torch.randn(4, 8)
        ops.layer_norm_out(big[:3], w, b, 1e-5, big[1:])
    with pytest.raises(RuntimeError, match="both"):
        ops.layer_norm_backward(x, x, w, torch.zeros(3), None, 1e-5)
    with pytest.raises(ValueError, match="eps"):
        ops.layer_norm(x, w, b, -1.0)


def test_fakes_refuse_what_the_kernel_refuses():
    """The CPU kernel's message names the problem; the fake (meta) refuses the same input,
    naming only the argument."""
    x = torch.randn(3, 4)
    w, b = _params(4)
    cases = [((x, torch.randn(7), None, 1e-5), r"'weight' must have shape \(4,\)", "'weight'"),
             ((x, None, torch.randn(4, 1), 1e-5), r"'bias' must have shape \(4,\)", "'bias'"),
             ((torch.tensor(1.0), None, None, 1e-5), "at least 1", "'x'"),
             ((x.double(), None, None, 1e-5), "'x' must have dtype Float", "'x'"),
             ((x, w.half(), None, 1e-5), "'weight' must have dtype Float", "'weight'"),
             ((x, w, b, -1.0), "eps", "eps"), ((x, w, b, float("nan")), "eps", "eps")]
    for args, match, what in cases:
        for op in (ops.layer_norm, ops.layer_norm_inference, ops.layer_norm_with_stats):
            with pytest.raises((RuntimeError, ValueError), match=match):
                op(*args)
            with pytest.raises((RuntimeError, ValueError), match=f"invalid {what}"):
                op(*(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args))
    for out, match in ((torch.empty(3, 5), "'out' must have shape"),
                       (torch.empty(4, 3).t(), "'out' must be contiguous")):
        for device in ("cpu", "meta"):
            with pytest.raises(RuntimeError, match=match if device == "cpu" else "invalid 'out'"):
                ops.layer_norm_out(x.to(device), w.to(device), b.to(device), 1e-5, out.to(device))
    for device, match in (("cpu", "both"), ("meta", "invalid 'mean' and 'rstd'")):
        with pytest.raises(RuntimeError, match=match):
            ops.layer_norm_backward(x.to(device), x.to(device), None,
                                    torch.zeros(3, device=device), None, 1e-5)


def test_out_overlapping_inputs():
    w, b = _params(8)
    # out is x (same layout): allowed, each row is read before it is written
    x = torch.randn(4, 8)
    ref = layer_norm_reference(x, w, b)
    layer_norm(x, w, b, out=x)
    torch.testing.assert_close(x, ref)
    # strided views of one buffer, which ATen cannot classify: refused, not miscomputed
    big = torch.randn(4, 16)
    with pytest.raises(RuntimeError, match="overlap"):
        layer_norm(big[:, 2:10], w, b, out=big.view(-1)[4:36].view(4, 8))
    # out over the weight or the bias: refused (later rows would read overwritten values)
    buf = torch.randn(3, 8)
    with pytest.raises(RuntimeError, match="must not overlap weight or bias"):
        layer_norm(torch.randn(3, 8), buf[0], b, out=buf)
    with pytest.raises(RuntimeError, match="must not overlap weight or bias"):
        layer_norm(torch.randn(3, 8), w, buf[2], out=buf)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 5), c=st.integers(1, 20), stride=st.integers(0, 6),
       start=st.integers(0, 120), seed=st.integers(0, 2**16))
def test_property_out_aliasing(rows, c, stride, start, seed):
    """out anywhere in the buffer that holds x (rows strided): the right answer or a clear
    refusal, never a silently wrong one."""
    g = torch.Generator().manual_seed(seed)
    buf = torch.randn(rows * (c + stride) + rows * c + 130, generator=g)
    x = buf.as_strided((rows, c), (c + stride, 1))
    expected = layer_norm_reference(x, None, None)
    start = min(start, buf.numel() - rows * c)
    out = buf[start:start + rows * c].view(rows, c)
    try:
        layer_norm(x, None, None, out=out)
    except RuntimeError as exc:
        assert "overlap" in str(exc) or "shares memory" in str(exc)
        return
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


# Rows of 36 and 53: a NaN in the two-vector loop, the one-vector loop and the scalar tail of
# the AVX2 (16 / 8-wide) and AVX-512 (32 / 16) forms.
@pytest.mark.parametrize("c, pos", [(36, 0), (36, 3), (36, 17), (36, 33), (53, 2), (53, 40),
                                    (53, 50)])
def test_nan_row_matches_reference(c, pos, isa):
    x = torch.randn(3, c)
    x[1, pos] = float("nan")
    w, b = _params(c)
    ref = layer_norm_reference(x, w, b)
    assert ref[1].isnan().all() and torch.isfinite(ref[[0, 2]]).all()
    torch.testing.assert_close(layer_norm(x, w, b), ref, equal_nan=True)


def test_cuda_fake_tensors_rejected_naming_the_argument():
    """What torch.compile sees for CUDA inputs (FakeTensors on cuda, no GPU needed)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        with pytest.raises(RuntimeError, match="'bias' is on cuda:0, .* CPU kernels only"):
            layer_norm(torch.empty(2, 4), None, torch.empty(4, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rejected():
    with pytest.raises(RuntimeError, match="CPU"):
        layer_norm(torch.randn(4, 4, device="cuda"), None, None)
