"""smallmind::gemm / linear custom ops (csrc/gemm.cpp) against their PyTorch references."""
import os

import pytest
import torch
import torch.nn.functional as F

from helpers import ops_binding_or_skip

G = ops_binding_or_skip("_gemm")

from hypothesis import given, settings, strategies as st

from ops_isa import ISAS, isa, use_isa  # noqa: F401 (isa: a fixture)

ops = torch.ops.smallmind

# (M, K, N): size 1, decode M = 1..8, odd sizes, K > KC (256) and N > NC (4096) blocks.
SHAPES = [
    (1, 1, 1), (1, 256, 768), (2, 256, 1024), (3, 17, 33), (4, 64, 40), (5, 300, 70),
    (6, 16, 16), (7, 5, 9), (8, 256, 256), (13, 3, 4113), (37, 129, 65),
    (128, 128, 128), (130, 257, 99), (97, 513, 31),
    (16, 256, 96), (24, 520, 64), (9, 33, 47),  # prefill-like M, whole and partial micro-tiles
]


def close(actual, expected, k):
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=2e-5 * max(k, 1) ** 0.5 * 4)


KERNELS = {"avx512": "avx512-8x32", "avx2": "avx2-fma-6x16", "scalar": "scalar-4x4"}


def test_kernel_name(isa):
    assert G.kernel_name() == KERNELS[isa]


@pytest.mark.parametrize("mkn", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_matches_reference(mkn, isa):
    m, k, n = mkn
    a, b = torch.randn(m, k), torch.randn(k, n)
    close(G.gemm(a, b), G.gemm_reference(a, b), k)


@pytest.mark.parametrize("mkn", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_reference(mkn, with_bias, isa):
    m, k, n = mkn
    x, w = torch.randn(m, k), torch.randn(n, k)
    bias = torch.randn(n) if with_bias else None
    close(G.linear(x, w, bias), G.linear_reference(x, w, bias), k)
    close(G.linear(x, w, bias), F.linear(x, w, bias), k)


def test_gemm_strided_inputs(isa):
    a = torch.randn(40, 70)
    b = torch.randn(90, 33)
    for aa, bb in [
        (a.t(), b[:40, :]),                       # transposed a (column-major)
        (a[:, ::2], torch.randn(20, 35).t()),     # sliced columns, transposed b
        (a[::3, 1:36], b[5:40, ::2]),             # row and column steps
        (a[:1, :35], b[:35, :7]),                 # decode-like M = 1, views
        (a[:3, :35], torch.randn(20, 35)[:7].t()),  # small M with transposed b
        (torch.randn(1, 35).expand(5, 35), b[:35]),  # stride-0 rows
    ]:
        assert not (aa.is_contiguous() and bb.is_contiguous())
        close(G.gemm(aa, bb), aa @ bb, aa.shape[1])


def test_linear_leading_dims_and_noncontiguous_x(isa):
    w, bias = torch.randn(24, 19), torch.randn(24)
    for x in [torch.randn(19), torch.randn(2, 3, 19), torch.randn(3, 2, 19).transpose(0, 1),
              torch.randn(2, 5, 40)[..., 3:22], torch.randn(19, 6).t(),
              torch.randn(2, 0, 19)]:
        y = G.linear(x, w, bias)
        assert y.shape == (*x.shape[:-1], 24)
        close(y, G.linear_reference(x, w, bias), 19)
    # a non-contiguous weight works too
    wt = torch.randn(19, 24).t()
    x = torch.randn(5, 19)
    close(G.linear(x, wt), x @ wt.t(), 19)


def test_packed_weight_cache_follows_the_weight(isa):
    """linear without autograd keeps the weight packed (M > 4); a weight changed in place is
    repacked, and a new weight at a freed one's address is never taken for the old one."""
    G.packed_weight_cache(0)
    G.packed_weight_cache(1 << 30)
    x, w, b = torch.randn(16, 40), torch.randn(24, 40), torch.randn(24)
    with torch.no_grad():
        close(G.linear(x, w, b), F.linear(x, w, b), 40)
        assert G.packed_weight_cache()["entries"] == 1
        close(G.linear(x, w, b), F.linear(x, w, b), 40)  # a hit
        assert G.packed_weight_cache()["entries"] == 1
        w.mul_(2.0)                                       # in place: the version moves
        close(G.linear(x, w, b), F.linear(x, w, b), 40)
        w[3].zero_()                                      # through a view: the same counter
        out = torch.empty(16, 24)
        close(G.linear(x, w, b, out=out), F.linear(x, w, b), 40)
        assert G.packed_weight_cache()["entries"] == 1    # repacked in place of the stale copy
        for _ in range(4):  # fresh weights, likely at the address just freed
            w2 = torch.randn(24, 40)
            close(G.linear(x, w2, b), F.linear(x, w2, b), 40)
            del w2
        # a write the version counter does not see (.data): stale until the cache is emptied
        w.data.copy_(torch.randn(24, 40))
        G.packed_weight_cache(0)
        G.packed_weight_cache(1 << 30)
        close(G.linear(x, w, b), F.linear(x, w, b), 40)


def test_packed_weight_cache_capacity_and_inference_tensors():
    x, w = torch.randn(8, 64), torch.randn(32, 64)
    try:
        G.packed_weight_cache(0)
        with torch.no_grad():
            close(G.linear(x, w), F.linear(x, w), 64)
            assert G.packed_weight_cache()["entries"] == 0   # capacity 0: off
            G.packed_weight_cache(1000)                     # smaller than the weight
            close(G.linear(x, w), F.linear(x, w), 64)
            assert G.packed_weight_cache() == {"entries": 0, "bytes": 0, "capacity_bytes": 1000}
            G.packed_weight_cache(1 << 30)
            close(G.linear(x, w), F.linear(x, w), 64)
            assert G.packed_weight_cache()["bytes"] >= 32 * 64 * 4
        with torch.inference_mode():  # no version counter: packed per call, never cached
            wi, xi = torch.randn(32, 64), torch.randn(8, 64)
            before = G.packed_weight_cache()["entries"]
            close(G.linear(xi, wi), F.linear(xi, wi), 64)
            assert G.packed_weight_cache()["entries"] == before
        with pytest.raises(ValueError, match="capacity_bytes must be >= 0"):
            G.packed_weight_cache(-1)
        with pytest.raises(TypeError, match="capacity_bytes must be an int"):
            G.packed_weight_cache(1.5)
    finally:
        G.packed_weight_cache(1 << 30)


def test_k_zero_and_empty():
    assert torch.equal(G.gemm(torch.randn(3, 0), torch.randn(0, 4)), torch.zeros(3, 4))
    bias = torch.randn(4)
    assert torch.equal(G.linear(torch.randn(2, 0), torch.randn(4, 0), bias),
                       bias.expand(2, 4))
    assert G.gemm(torch.randn(0, 5), torch.randn(5, 3)).shape == (0, 3)


def test_out_variants_write_in_place():
    x, w, bias = torch.randn(2, 7, 33), torch.randn(50, 33), torch.randn(50)
    out = torch.empty(2, 7, 50)
    ptr = out.data_ptr()
    r = G.linear(x, w, bias, out=out)
    assert r is out and out.data_ptr() == ptr
    close(out, G.linear_reference(x, w, bias), 33)
    a, b = torch.randn(9, 33), torch.randn(33, 21)
    out2 = torch.full((9, 21), float("nan"))
    assert G.gemm(a, b, out=out2) is out2
    close(out2, a @ b, 33)


def test_linear_out_allocates_nothing_of_size_mn():
    m, k, n = 64, 96, 200
    x, w, bias = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    out = torch.empty(m, n)
    G.linear(x, w, bias, out=out)  # warm-up
    with torch.no_grad(), torch.profiler.profile(profile_memory=True) as prof:
        G.linear(x, w, bias, out=out)
    sizes = [e.nbytes() for e in prof.profiler.kineto_results.events()
             if e.name() == "[memory]" and e.nbytes() > 0]
    assert all(s < m * n * 4 for s in sizes), sizes


def test_same_result_for_any_thread_count(isa):
    a, b = torch.randn(70, 300), torch.randn(300, 90)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = G.gemm(a, b)
        torch.set_num_threads(max(2, threads))
        many = G.gemm(a, b)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)  # each element summed in the same k order


@pytest.mark.parametrize("dims", [(1, 8, 5), (3, 17, 33), (2, 6, 64, 40)],
                         ids=["M1", "odd", "batched"])
def test_linear_gradients_match_reference(dims, isa):
    *lead, k, n = dims
    x0, w0, b0 = torch.randn(*lead, k), torch.randn(n, k), torch.randn(n)
    r = torch.randn(*lead, n)

    def grads(fn, noncontig_x=False):
        x = x0.clone().requires_grad_()
        w = w0.clone().requires_grad_()
        b = b0.clone().requires_grad_()
        xin = x.transpose(0, -2).contiguous().transpose(0, -2) if noncontig_x else x
        (fn(xin, w, b) * r).sum().backward()
        return x.grad, w.grad, b.grad

    ref = grads(G.linear_reference)
    for noncontig in (False, True):
        for got, exp in zip(grads(G.linear, noncontig), ref):
            close(got, exp, max(k, n) * 4)


def test_gemm_gradients_match_reference(isa):
    a0, b0 = torch.randn(9, 31), torch.randn(31, 14)
    r = torch.randn(9, 14)
    res = []
    for fn in (G.gemm, G.gemm_reference):
        a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
        (fn(a, b) * r).sum().backward()
        res.append((a.grad, b.grad))
    for got, exp in zip(*res):
        close(got, exp, 31)


def test_linear_out_with_grad_records_autograd():
    x = torch.randn(4, 10, requires_grad=True)
    w = torch.randn(6, 10, requires_grad=True)
    out = torch.empty(4, 6)
    y = G.linear(x, w, None, out=out)
    assert y is out
    y.sum().backward()
    close(x.grad, torch.ones(4, 6) @ w.detach(), 10)


# (M, K, N) at the edges of every ISA's blocking: micro-tiles (MR = 8 / 6 / 4 rows, NR = 32 /
# 16 / 4 columns) whole and cut, the small-M path (M <= 4), K = 0, K past a block (KC = 256).
NAIVE_SHAPES = [(1, 1, 1), (1, 7, 33), (2, 5, 3), (4, 16, 17), (5, 3, 31), (6, 2, 16),
                (7, 33, 32), (8, 1, 65), (9, 257, 5), (13, 0, 4), (17, 40, 97)]


def test_matches_naive_loop(isa):
    """gemm and linear on this ISA against their naive loop (gemm_kernel.h's sgemm_naive)."""
    naive = torch.ops.smallmind_naive
    for m, k, n in NAIVE_SHAPES:
        a, b, bias = torch.randn(m, k), torch.randn(k, n), torch.randn(n)
        close(G.gemm(a, b), naive.gemm(a, b), k)
        close(G.gemm(a.t().contiguous().t(), b), naive.gemm(a, b), k)  # a column-major view
        close(G.linear(a, b.t(), bias), naive.linear(a, b.t(), bias), k)
        close(G.linear(a, b.t().contiguous()), naive.linear(a, b.t().contiguous()), k)


def test_opcheck():
    a, b = torch.randn(7, 19), torch.randn(19, 11)
    torch.library.opcheck(ops.gemm.default, (a, b))
    torch.library.opcheck(ops.gemm.default, (a.clone().requires_grad_(),
                                             b.clone().requires_grad_()))
    torch.library.opcheck(ops.gemm_out.default, (a, b), {"out": torch.empty(7, 11)})
    x, w, bias = torch.randn(2, 3, 19), torch.randn(11, 19), torch.randn(11)
    torch.library.opcheck(ops.linear.default, (x, w, bias))
    torch.library.opcheck(ops.linear.default, (x.requires_grad_(), w.requires_grad_(),
                                               bias.requires_grad_()))
    torch.library.opcheck(ops.linear.default, (torch.randn(1, 19), w.detach(), None))
    torch.library.opcheck(ops.linear_out.default, (x.detach(), w.detach(), bias.detach()),
                          {"out": torch.empty(2, 3, 11)})
    torch.library.opcheck(ops.gemm_inference.default, (a, b))
    torch.library.opcheck(ops.gemm_inference.default, (a.t(), torch.randn(7, 4)))
    torch.library.opcheck(ops.linear_inference.default, (x.detach(), w.detach(), bias.detach()))
    torch.library.opcheck(ops.linear_inference.default, (torch.randn(1, 19), w.detach(), None))


def test_inference_twins_skip_autograd():
    a, b = torch.randn(3, 4, requires_grad=True), torch.randn(4, 5)
    assert G.gemm(a, b).grad_fn is not None and G.linear(a, b.t()).grad_fn is not None
    with torch.no_grad():
        assert not G.gemm(a, b).requires_grad and not G.linear(a, b.t()).requires_grad
    close(ops.gemm_inference(a.detach(), b), a.detach() @ b, 4)
    close(ops.linear_inference(a.detach(), b.t(), None), a.detach() @ b, 4)


# D6: gemm_out / linear_out read inputs that they had already overwritten when `out` shared
# memory with them (the small-M path and every K > 256); now they compute into a temporary.
@pytest.mark.parametrize("m, k", [(3, 3), (4, 4), (300, 300), (7, 7)])
def test_out_aliasing_an_input_is_computed_correctly(m, k, isa):
    a, b = torch.randn(m, k), torch.randn(k, k)
    for alias in ("a", "b"):
        x, y = a.clone(), b.clone()
        out = x if alias == "a" else y
        assert G.gemm(x, y, out=out) is out
        close(out, a @ b, k)
    x, w, bias = torch.randn(m, k), torch.randn(k, k), torch.randn(k)
    for alias in ("x", "w"):
        xx, ww = x.clone(), w.clone()
        out = xx if alias == "x" else ww
        G.linear(xx, ww, bias, out=out)
        close(out, F.linear(x, w, bias), k)
    bb = bias.clone()  # out over the bias (M = 1)
    G.linear(x[:1], w, bb, out=bb.view(1, k))
    close(bb.view(1, k), F.linear(x[:1], w, bias), k)


def test_out_partially_overlapping_strided_views():
    """Strided views whose overlap ATen reports as too hard to tell."""
    buf = torch.randn(6, 40)
    a = buf[:, :16]                  # rows strided by 40
    b = torch.randn(16, 8)
    expected = a @ b
    out = buf.view(-1)[10:58].view(6, 8)  # contiguous, crossing a's rows
    G.gemm(a, b, out=out)
    close(out, expected, 16)
    buf = torch.randn(5, 24)
    x, w = buf[:, 4:20], torch.randn(8, 16)
    expected = F.linear(x, w)
    out = buf.view(-1)[30:70].view(5, 8)
    G.linear(x, w, out=out)
    close(out, expected, 16)


def test_fakes_refuse_what_the_kernel_refuses():
    """The CPU kernel's message names the problem; the fake (meta) refuses the same input,
    naming only the argument."""
    a, b = torch.randn(3, 4), torch.randn(4, 5)

    def says(device, match, what):
        return match if device == "cpu" else f"invalid {what}"

    for out, match in ((torch.empty(3, 4), "'out' must have shape"),
                       (torch.empty(5, 3).t(), "'out' must be contiguous"),
                       (torch.empty(3, 5, dtype=torch.float64), "'out' must have dtype Float")):
        for device in ("cpu", "meta"):
            with pytest.raises(RuntimeError, match=says(device, match, "'out'")):
                ops.gemm_out(a.to(device), b.to(device), out=out.to(device))
            with pytest.raises(RuntimeError, match=says(device, match, "'out'")):
                ops.linear_out(a.to(device), b.t().to(device), None, out=out.to(device))
    for args, match, what in (((a, torch.randn(5, 6)), "size mismatch", "sizes"),
                              ((a[0], b), "'a' must be 2-D", "'a'")):
        for op in (ops.gemm, ops.gemm_inference):
            for device in ("cpu", "meta"):
                with pytest.raises(RuntimeError, match=says(device, match, what)):
                    op(*(t.to(device) for t in args))
    for op in (ops.linear, ops.linear_inference):
        for device in ("cpu", "meta"):
            with pytest.raises(RuntimeError,
                               match=says(device, "'bias' must be 1-D of size N", "'bias'")):
                op(a.to(device), b.t().to(device), torch.randn(4, device=device))


def _compile_available():
    if os.environ.get("SMALLMIND_SKIP_COMPILE"):
        return False
    try:
        import torch._dynamo  # noqa: F401
        return True
    except Exception:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _compile_available(), reason="torch.compile unavailable "
                    "(or SMALLMIND_SKIP_COMPILE set)")
def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def f(x, w, bias, w2):
        h = G.linear(x, w, bias)
        return G.gemm(torch.relu(h).reshape(-1, h.shape[-1]), w2).sum()

    x = torch.randn(2, 5, 12, requires_grad=True)
    w = torch.randn(20, 12, requires_grad=True)
    bias = torch.randn(20, requires_grad=True)
    w2 = torch.randn(20, 3, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    y = compiled(x, w, bias, w2)
    y.backward()
    grads = [t.grad.clone() for t in (x, w, bias, w2)]
    for t in (x, w, bias, w2):
        t.grad = None
    f(x, w, bias, w2).backward()
    close(y, f(x, w, bias, w2), 20)
    for got, t in zip(grads, (x, w, bias, w2)):
        close(got, t.grad, 20)


@settings(deadline=None, max_examples=25)
@given(m=st.integers(1, 40), k=st.integers(1, 300), n=st.integers(1, 70),
       bias=st.booleans(), scale=st.sampled_from([1e-3, 1.0, 30.0]),
       seed=st.integers(0, 2**31 - 1), isa=st.sampled_from(ISAS))
def test_property_linear_and_gemm(m, k, n, bias, scale, seed, isa):
    with use_isa(isa):
        _property_linear_and_gemm(m, k, n, bias, scale, seed)


def _property_linear_and_gemm(m, k, n, bias, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * scale
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    ref = G.linear_reference(x.double(), w.double(), None if b is None else b.double())
    tol = dict(rtol=1e-4, atol=1e-5 * scale * k ** 0.5 * 8)
    torch.testing.assert_close(G.linear(x, w, b).double(), ref, **tol)
    torch.testing.assert_close(G.gemm(x, w.t()).double(), x.double() @ w.double().t(), **tol)


# ----------------------------------------------------------------------------------------
# bad input: clear errors, never a crash
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, match", [
    ((torch.randn(3, 4).double(), torch.randn(4, 5)), "'a' must have dtype Float"),
    ((torch.randn(3, 4), torch.ones(4, 5, dtype=torch.int64)), "'b' must have dtype Float"),
    ((torch.randn(3, 4, 1), torch.randn(4, 5)), "'a' must be 2-D"),
    ((torch.randn(3, 4), torch.randn(4)), "'b' must be 2-D"),
    ((torch.randn(3, 4), torch.randn(5, 6)), "size mismatch"),
])
def test_gemm_bad_input(args, match):
    with pytest.raises(RuntimeError, match=match):
        G.gemm(*args)


@pytest.mark.parametrize("args, match", [
    ((torch.randn(3, 4).half(), torch.randn(5, 4)), "'x' must have dtype Float"),
    ((torch.randn(3, 4), torch.randn(5, 4).double()), "'weight' must have dtype Float"),
    ((torch.randn(3, 4), torch.randn(5, 4, 1)), "'weight' must be 2-D"),
    ((torch.randn(3, 4), torch.randn(4, 5)), "size mismatch"),
    ((torch.tensor(1.0), torch.randn(5, 4)), "'x' must have at least 1"),
    ((torch.randn(3, 4), torch.randn(5, 4), torch.randn(4)), "'bias' must be 1-D of size N"),
    ((torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 1)), "'bias' must be 1-D"),
    ((torch.randn(3, 4), torch.randn(5, 4), torch.randn(5).double()), "'bias' must have dtype"),
])
def test_linear_bad_input(args, match):
    with pytest.raises(RuntimeError, match=match):
        G.linear(*args)


@settings(deadline=None, max_examples=40)
@given(m=st.integers(1, 12), k=st.integers(1, 300), n=st.integers(1, 20),
       alias=st.sampled_from(["a", "b", "x", "w", "bias", "window"]),
       seed=st.integers(0, 2**31 - 1), isa=st.sampled_from(ISAS))
def test_property_out_aliasing(m, k, n, alias, seed, isa):
    """out sharing memory with an input, in every way the shapes allow: the right answer."""
    with use_isa(isa):
        _property_out_aliasing(m, k, n, alias, seed)


def _property_out_aliasing(m, k, n, alias, seed):
    g = torch.Generator().manual_seed(seed)
    if alias in ("a", "b"):
        n = k if alias == "a" else n
        m = k if alias == "b" else m
        a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
        expected = a @ b
        out = a if alias == "a" else b
        G.gemm(a, b, out=out)
    elif alias in ("x", "w", "bias"):
        n = k if alias in ("x", "w") else n
        m = n if alias == "w" else (1 if alias == "bias" else m)
        x, w, bias = (torch.randn(m, k, generator=g), torch.randn(n, k, generator=g),
                      torch.randn(n, generator=g))
        expected = F.linear(x, w, bias)
        out = {"x": x, "w": w, "bias": bias.view(1, n)}[alias]
        G.linear(x, w, bias, out=out)
    else:  # out a window of the buffer that holds a's rows
        buf = torch.randn(m * k + m * n, generator=g)
        a, b = buf[: m * k].view(m, k), torch.randn(k, n, generator=g)
        expected = a @ b
        start = int(torch.randint(0, m * k + 1, (), generator=g))
        out = buf[start:start + m * n].view(m, n) if start + m * n <= buf.numel() else \
            buf[-m * n:].view(m, n)
        G.gemm(a, b, out=out)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * k ** 0.5)


def test_bad_out():
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    with pytest.raises(RuntimeError, match="'out' must have shape"):
        G.gemm(a, b, out=torch.empty(3, 4))
    with pytest.raises(RuntimeError, match="'out' must be contiguous"):
        G.gemm(a, b, out=torch.empty(5, 3).t())
    with pytest.raises(RuntimeError, match="'out' must have dtype Float"):
        G.linear(a, b.t(), None, out=torch.empty(3, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="'b' must be a torch.Tensor"):
        G.gemm(a, b.tolist())
    with pytest.raises(TypeError, match="'bias' must be a torch.Tensor or None"):
        G.linear(a, b.t(), [0.0] * 5)


def test_cuda_fake_tensors_rejected_naming_the_argument():
    """What torch.compile sees for CUDA inputs (FakeTensors on cuda, no GPU needed)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        with pytest.raises(RuntimeError, match="'a' is on cuda:0, .* CPU kernels only"):
            G.gemm(torch.empty(3, 4, device="cuda"), torch.empty(4, 5, device="cuda"))
        with pytest.raises(RuntimeError, match="'weight' is on cuda:0, .* CPU kernels only"):
            G.linear(torch.empty(3, 4), torch.empty(5, 4, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensor_rejected():
    with pytest.raises(RuntimeError, match="CUDA|CPU"):
        G.gemm(torch.randn(3, 4, device="cuda"), torch.randn(4, 5, device="cuda"))
    with pytest.raises(RuntimeError, match="CUDA|CPU"):
        G.gemm(torch.randn(3, 4, device="cuda"), torch.randn(4, 5))


def test_packed_weight_cache_under_concurrent_callers():
    """Threads sharing weights (the GIL is released inside the op): every result right."""
    import threading

    weights = [torch.randn(48, 64) for _ in range(3)]
    xs = [torch.randn(12, 64) for _ in range(4)]
    errors = []

    def work(seed):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for i in range(30):
                w, x = weights[(seed + i) % 3], xs[i % 4]
                if i % 10 == 9:  # a fresh weight now and then
                    w = torch.randn(48, 64, generator=g)
                try:
                    close(G.linear(x, w), F.linear(x, w), 64)
                except AssertionError as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
