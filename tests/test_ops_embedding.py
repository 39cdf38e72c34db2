"""smallmind::embedding / embedding_backward custom ops (csrc/embedding.cpp)."""
import os

import pytest
import torch

from helpers import INT_EXTREMES, ops_binding_or_skip

E = ops_binding_or_skip("_embedding")

from hypothesis import given, settings, strategies as st

ops = torch.ops.smallmind



def index_add_path(grad, idx, num_weights):
    """What autograd's embedding backward computes (the scatter-add form)."""
    d = grad.shape[-1]
    return torch.zeros(num_weights, d).index_add_(0, idx.flatten(), grad.reshape(-1, d))


# (idx shape, V, D): size 1, odd sizes, the seed's (B, T) = (8, 128) with V = 512, D = 256
CASES = [((1,), 1, 1), ((7,), 5, 3), ((3, 5), 11, 17), ((2, 3, 4), 97, 33),
         ((1, 1), 512, 256), ((8, 128), 512, 256), ((4, 40), 3, 8)]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_matches_reference(case):
    shape, v, d = case
    w, idx = torch.randn(v, d), torch.randint(0, v, shape)
    out = E.embedding(idx, w)
    assert out.shape == (*shape, d)
    assert torch.equal(out, E.embedding_reference(idx, w))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_backward_matches_index_add(case):
    shape, v, d = case
    idx, grad = torch.randint(0, v, shape), torch.randn(*shape, d)
    got = E.embedding_backward(grad, idx, v)
    torch.testing.assert_close(got, index_add_path(grad, idx, v), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, E.embedding_backward_reference(grad, idx, v),
                               rtol=1e-6, atol=1e-6)


def test_noncontiguous_inputs():
    w = torch.randn(20, 9).t()                       # (9, 20), non-contiguous weight
    idx = torch.randint(0, 9, (6, 4)).t()             # (4, 6), non-contiguous ids
    assert torch.equal(E.embedding(idx, w), w[idx])
    grad = torch.randn(6, 4, 20).transpose(0, 1)      # (4, 6, 20), non-contiguous grad
    torch.testing.assert_close(E.embedding_backward(grad, idx, 9),
                               index_add_path(grad, idx, 9), rtol=1e-6, atol=1e-6)


def test_repeated_ids_unused_rows_and_empty():
    idx = torch.full((50,), 3)
    grad = torch.randn(50, 4)
    gw = E.embedding_backward(grad, idx, 10)
    torch.testing.assert_close(gw[3], grad.sum(0), rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(gw[torch.arange(10) != 3]) == 0
    empty = torch.zeros(0, dtype=torch.long)
    assert torch.equal(E.embedding_backward(torch.randn(0, 4), empty, 6), torch.zeros(6, 4))
    assert E.embedding(empty, torch.randn(6, 4)).shape == (0, 4)


def test_backward_is_deterministic_across_threads():
    idx = torch.randint(0, 37, (16, 64))
    grad = torch.randn(16, 64, 48)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = E.embedding_backward(grad, idx, 37)
        torch.set_num_threads(max(2, threads))
        many = [E.embedding_backward(grad, idx, 37) for _ in range(3)]
    finally:
        torch.set_num_threads(threads)
    for m in many:
        assert torch.equal(one, m)


def test_autograd_matches_reference():
    w0 = torch.randn(13, 7)
    idx = torch.randint(0, 13, (3, 9))
    r = torch.randn(3, 9, 7)
    grads = []
    for fn in (E.embedding, E.embedding_reference):
        w = w0.clone().requires_grad_()
        (fn(idx, w) * r).sum().backward()
        grads.append(w.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-6)


def test_opcheck():
    w = torch.randn(11, 6)
    idx = torch.randint(0, 11, (2, 5))
    torch.library.opcheck(ops.embedding.default, (idx, w))
    torch.library.opcheck(ops.embedding.default, (idx, w.clone().requires_grad_()))
    torch.library.opcheck(ops.embedding_backward.default, (torch.randn(2, 5, 6), idx, 11))
    torch.library.opcheck(ops.embedding_inference.default, (idx, w))
    torch.library.opcheck(ops.embedding_inference.default, (idx.t(), w[:, ::2]))


def test_inference_twin_skips_autograd():
    w, idx = torch.randn(6, 3, requires_grad=True), torch.tensor([[1, 5], [0, 0]])
    assert E.embedding(idx, w).grad_fn is not None
    with torch.no_grad():
        assert not E.embedding(idx, w).requires_grad
    assert torch.equal(ops.embedding_inference(idx, w.detach()), w.detach()[idx])


# D13: an empty embedding dim skipped the id range check, and num_weights = 0 with ids
# returned an empty gradient; every id is checked now, whatever the result's size.
def test_ids_checked_even_when_the_result_is_empty():
    with pytest.raises(RuntimeError, match=r"index out of range.*= 99"):
        E.embedding(torch.tensor([99, -5]), torch.randn(4, 0))
    with pytest.raises(RuntimeError, match=r"index out of range.*= -5"):
        E.embedding(torch.tensor([0, -5]), torch.randn(4, 0))
    with pytest.raises(RuntimeError, match=r"index out of range.*\[0, 0\)"):
        E.embedding_backward(torch.randn(3, 4), torch.tensor([0, 1, 2]), 0)
    with pytest.raises(RuntimeError, match=r"index out of range.*= 7"):
        E.embedding_backward(torch.randn(2, 0), torch.tensor([0, 7]), 5)
    assert E.embedding(torch.tensor([1, 3]), torch.randn(4, 0)).shape == (2, 0)
    assert E.embedding_backward(torch.randn(0, 4), torch.zeros(0, dtype=torch.long), 0).shape \
        == (0, 4)


@pytest.mark.parametrize("num_weights", [-1, -2**63, 2**62, 2**63 - 3, 2**63 - 1])
def test_num_weights_extremes_raise(num_weights):
    grad, idx = torch.randn(2, 3), torch.tensor([0, 1])
    match = "num_weights must be >= 0" if num_weights < 0 else "cannot be allocated"
    with pytest.raises(ValueError, match=match):
        E.embedding_backward(grad, idx, num_weights)
    if num_weights < 0:  # the fake knows no D-independent limit above
        with pytest.raises(ValueError, match="invalid num_weights"):
            ops.embedding_backward(grad.to("meta"), idx.to("meta"), num_weights)


def test_fakes_refuse_what_the_kernel_refuses():
    """The CPU kernel's message names the problem; the fake (meta) refuses the same input,
    naming only the argument."""
    w, idx = torch.randn(4, 3), torch.tensor([0, 1])
    cases = [((idx.int(), w), "'indices' must have dtype Long", "'indices'"),
             ((idx, w.double()), "'weight' must have dtype Float", "'weight'"),
             ((idx, torch.randn(4)), "'weight' must be 2-D", "'weight'")]
    for args, match, what in cases:
        for op in (ops.embedding, ops.embedding_inference):
            for device in ("cpu", "meta"):
                with pytest.raises(RuntimeError,
                                   match=match if device == "cpu" else f"invalid {what}"):
                    op(*(t.to(device) for t in args))
    for device in ("cpu", "meta"):
        with pytest.raises(RuntimeError, match="must have shape" if device == "cpu"
                           else "invalid 'grad_output'"):
            ops.embedding_backward(torch.randn(3, 3, device=device), idx.to(device), 5)
        with pytest.raises(RuntimeError, match="'grad_output' must have dtype Float"
                           if device == "cpu" else "invalid 'grad_output'"):
            ops.embedding_backward(torch.randn(2, 3, device=device).double(), idx.to(device), 5)
    with pytest.raises(TypeError, match="'num_weights' must be an int"):
        E.embedding_backward(torch.randn(2, 3), idx, 5.0)


@settings(deadline=None, max_examples=60)
@given(n=st.integers(0, 6), d=st.integers(0, 5),
       num_weights=st.one_of(st.sampled_from(INT_EXTREMES), st.integers(-2, 8)),
       id_max=st.integers(-3, 9), seed=st.integers(0, 2**31 - 1))
def test_property_any_num_weights_and_ids(n, d, num_weights, id_max, seed):
    """Every int64 num_weights and any ids: the reference's answer or a clear error."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(min(id_max, 0), max(id_max, 0) + 1, (n,), generator=g)
    grad = torch.randn(n, d, generator=g)
    if num_weights < 0:
        with pytest.raises(ValueError, match="num_weights must be >= 0"):
            E.embedding_backward(grad, idx, num_weights)
    elif d > 0 and num_weights * d * 4 >= 2**63:
        with pytest.raises(ValueError, match="cannot be allocated"):
            E.embedding_backward(grad, idx, num_weights)
    elif n > 0 and (idx.min() < 0 or idx.max() >= num_weights):
        with pytest.raises(RuntimeError, match="index out of range"):
            E.embedding_backward(grad, idx, num_weights)
    elif num_weights * max(d, 1) <= 10**6:  # (a valid 2**31 x d gradient is not allocated here)
        torch.testing.assert_close(E.embedding_backward(grad, idx, num_weights),
                                   index_add_path(grad, idx, num_weights) if d else
                                   torch.zeros(num_weights, 0))
    # the forward with a (num_weights, d) table, where it can exist
    if 0 <= num_weights <= 64:
        w = torch.randn(num_weights, d, generator=g)
        if n > 0 and (idx.min() < 0 or idx.max() >= num_weights):
            with pytest.raises(RuntimeError, match="index out of range"):
                E.embedding(idx, w)
        else:
            assert torch.equal(E.embedding(idx, w), w[idx])


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get("SMALLMIND_SKIP_COMPILE")),
                    reason="SMALLMIND_SKIP_COMPILE set")
def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def f(idx, w):
        return (E.embedding(idx, w) ** 2).sum()

    w = torch.randn(10, 4, requires_grad=True)
    idx = torch.randint(0, 10, (2, 6))
    y = torch.compile(f, fullgraph=True, backend="aot_eager")(idx, w)
    y.backward()
    got = w.grad.clone()
    w.grad = None
    f(idx, w).backward()
    torch.testing.assert_close(got, w.grad, rtol=1e-6, atol=1e-6)
    g = torch.compile(E.embedding_backward, fullgraph=True, backend="aot_eager")
    grad = torch.randn(2, 6, 4)
    torch.testing.assert_close(g(grad, idx, 10), index_add_path(grad, idx, 10),
                               rtol=1e-6, atol=1e-6)


@settings(deadline=None, max_examples=25)
@given(idx_shape=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       v=st.integers(1, 60), d=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_property_forward_backward(idx_shape, v, d, seed):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, v, idx_shape, generator=g)
    w = torch.randn(v, d, generator=g)
    grad = torch.randn(*idx_shape, d, generator=g)
    assert torch.equal(E.embedding(idx, w), w[idx])
    torch.testing.assert_close(E.embedding_backward(grad, idx, v),
                               index_add_path(grad, idx, v), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("idx, w, match", [
    (torch.tensor([0, 1.0]), torch.randn(4, 3), "'indices' must have dtype Long"),
    (torch.tensor([0, 1], dtype=torch.int32), torch.randn(4, 3), "'indices' must have dtype Long"),
    (torch.tensor([0, 1]), torch.randn(4, 3).double(), "'weight' must have dtype Float"),
    (torch.tensor([0, 1]), torch.randn(4), "'weight' must be 2-D"),
    (torch.tensor([0, 4]), torch.randn(4, 3), r"index out of range.*= 4.*\[0, 4\)"),
    (torch.tensor([[0], [-1]]), torch.randn(4, 3), r"index out of range.*= -1"),
])
def test_embedding_bad_input(idx, w, match):
    with pytest.raises(RuntimeError, match=match):
        E.embedding(idx, w)


@pytest.mark.parametrize("grad, idx, v, match", [
    (torch.randn(2, 3), torch.tensor([0, 5]), 5, r"index out of range.*= 5"),
    (torch.randn(2, 3), torch.tensor([0, -2]), 5, r"index out of range"),
    (torch.randn(2, 3).double(), torch.tensor([0, 1]), 5, "'grad_output' must have dtype Float"),
    (torch.randn(2, 3), torch.tensor([0.0, 1.0]), 5, "'indices' must have dtype Long"),
    (torch.randn(3, 3), torch.tensor([0, 1]), 5, "must have shape"),
    (torch.randn(2), torch.tensor([0, 1]), 5, "must have shape"),
])
def test_embedding_backward_bad_input(grad, idx, v, match):
    with pytest.raises(RuntimeError, match=match):
        E.embedding_backward(grad, idx, v)
    # num_weights = -1: a ValueError, in test_num_weights_extremes_raise


def test_cuda_fake_tensors_rejected_naming_the_argument():
    """What torch.compile sees for CUDA inputs (FakeTensors on cuda, no GPU needed)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        with pytest.raises(RuntimeError, match="'weight' is on cuda:0, .* CPU kernels only"):
            E.embedding(torch.zeros(2, dtype=torch.long), torch.empty(3, 4, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensor_rejected():
    with pytest.raises(RuntimeError, match="CUDA|CPU"):
        E.embedding(torch.tensor([0], device="cuda"), torch.randn(2, 3, device="cuda"))
