"""Fused decode block op (csrc/decode.cpp) against fused_decode.decode_block_reference."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.testing import assert_close

from smallmind_torch import GPT, ModelConfig
from smallmind_torch.decode_layout import BLOCK_PARAMS
from smallmind_torch.fused_decode import block_params, decode_block_reference

from helpers import INT_EXTREMES, assert_pos_and_n_head_refused, ops_binding_or_skip

decode_block_ = ops_binding_or_skip("_decode").decode_block_
ops = torch.ops.smallmind

from ops_isa import ISAS, isa, use_isa  # noqa: E402,F401 (isa: a fixture)



def _params(C):
    """Random block parameters in BLOCK_PARAMS order, weights scaled 1/sqrt(fan_in) so
    activations stay O(1)."""
    g = torch.Generator().manual_seed(C)
    r = lambda *s: torch.randn(*s, generator=g) * (0.2 if len(s) == 1 else s[1] ** -0.5)  # noqa: E731
    return [1.0 + r(C), r(C), r(3 * C, C), r(3 * C), r(C, C), r(C), 1.0 + r(C), r(C),
            r(4 * C, C), r(4 * C), r(C, 4 * C), r(C)]


def _run_both(B, C, n_head, S, maxB, pos, edit=None):
    torch.manual_seed(pos + 17 * B)
    hs = C // n_head
    params = _params(C)
    x = torch.randn(B, C)
    k = torch.randn(maxB, n_head, S, hs)
    v = torch.randn(maxB, n_head, S, hs)
    if edit is not None:
        edit(x, k, v)
    got = (x.clone(), k.clone(), v.clone())
    exp = (x.clone(), k.clone(), v.clone())
    with torch.no_grad():
        assert decode_block_(got[0], params, got[1], got[2], pos, n_head, 1e-5) is got[0]
        decode_block_reference(exp[0], params, exp[1], exp[2], pos, n_head, 1e-5)
    return (x, k, v), got, exp


@pytest.mark.parametrize("B, C, n_head, S, maxB", [
    (1, 256, 8, 128, 1), (3, 256, 8, 40, 4), (1, 48, 3, 9, 2), (3, 48, 3, 9, 3), (2, 64, 1, 5, 2),
    (5, 40, 5, 7, 6),   # B = 5: rows in pairs and an odd one; hs = 8
    (2, 20, 20, 6, 2),  # head size 1, C not a multiple of 16
])
def test_matches_reference(B, C, n_head, S, maxB, isa):
    for pos in sorted({0, 1, S // 2, S - 1}):
        (x, k, v), got, exp = _run_both(B, C, n_head, S, maxB, pos)
        assert_close(got[0], exp[0], rtol=1e-5, atol=1e-5)
        # k / v written exactly at [:B, :, pos] (the same float32 GEMV values), nowhere else
        assert_close(got[1], exp[1], rtol=1e-5, atol=1e-5)
        assert_close(got[2], exp[2], rtol=1e-5, atol=1e-5)
        untouched = torch.ones(maxB, n_head, S, dtype=torch.bool)
        untouched[:B, :, pos] = False
        assert torch.equal(got[1][untouched], k[untouched])
        assert torch.equal(got[2][untouched], v[untouched])
        assert not torch.equal(got[1][:B, :, pos], k[:B, :, pos])


@pytest.mark.parametrize("B, C, n_head, S, maxB, pos", [
    (1, 16, 2, 4, 1, 0), (2, 20, 20, 6, 3, 5), (3, 48, 3, 9, 3, 4), (1, 40, 5, 7, 2, 6),
    (2, 64, 1, 5, 2, 2),
])
def test_matches_naive_loop(B, C, n_head, S, maxB, pos, isa):
    """The block on this ISA against its naive loop (decode_kernel.h's decode_block_naive)."""
    (x, k, v), got, _ = _run_both(B, C, n_head, S, maxB, pos)  # got: the op's, on copies
    torch.ops.smallmind_naive.decode_block_(x, _params(C), k, v, pos, n_head, 1e-5)
    for a, e in zip(got, (x, k, v)):
        assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_block_params_order_is_the_op_order(isa):
    """block_params(model block) feeds the op and the reference the same way."""
    model = GPT(ModelConfig(n_layer=1, n_head=4, n_embd=32, vocab_size=16, block_size=8)).eval()
    block = model.transformer.h[0]
    with torch.no_grad():
        for p in block.parameters():  # non-trivial LayerNorm affine and biases
            p.add_(torch.randn_like(p) * 0.1)
    params = block_params(block)
    assert len(params) == len(BLOCK_PARAMS) == 12
    x = torch.randn(2, 32)
    k, v = torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)
    x2, k2, v2 = x.clone(), k.clone(), v.clone()
    with torch.no_grad():
        decode_block_(x, params, k, v, 3, 4, block.ln_1.eps)
        decode_block_reference(x2, params, k2, v2, 3, 4, block.ln_1.eps)
    assert_close(x, x2)
    assert_close(k, k2)


def test_requires_no_grad():
    params = [p.requires_grad_() for p in _params(16)]
    with pytest.raises(RuntimeError, match="inference only"):
        decode_block_(torch.randn(1, 16), params, torch.zeros(1, 2, 4, 8),
                      torch.zeros(1, 2, 4, 8), 0, 2, 1e-5)
    with torch.no_grad():
        decode_block_(torch.randn(1, 16), params, torch.zeros(1, 2, 4, 8),
                      torch.zeros(1, 2, 4, 8), 0, 2, 1e-5)


def test_opcheck():
    C, nh, S = 32, 4, 6
    args = (torch.randn(2, C), _params(C), torch.randn(3, nh, S, C // nh),
            torch.randn(3, nh, S, C // nh), 2, nh, 1e-5)
    torch.library.opcheck(ops.decode_block_.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def _bad_call(device="cpu", **changes):
    C, nh, S, maxB, B = 32, 4, 6, 2, 2
    kw = dict(x=torch.randn(B, C), params=_params(C), k=torch.zeros(maxB, nh, S, C // nh),
              v=torch.zeros(maxB, nh, S, C // nh), pos=1, n_head=nh, eps=1e-5)
    for name, value in changes.items():
        if name.startswith("w"):
            kw["params"][int(name[1:])] = value
        else:
            kw[name] = value
    to = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
    ops.decode_block_.default(to(kw["x"]), [to(p) for p in kw["params"]], to(kw["k"]),
                              to(kw["v"]), kw["pos"], kw["n_head"], kw["eps"])


BAD = [
    (dict(x=torch.randn(2, 32, dtype=torch.float64)), "'x' must have dtype Float"),
    (dict(x=torch.randn(32, 2).t()), "'x' must be contiguous"),
    (dict(x=torch.randn(2, 1, 32)), "'x' must be 2-D"),
    (dict(pos=6), r"pos must lie in \[0, 5\]"),
    (dict(pos=-1), r"pos must lie in \[0, 5\]"),
    (dict(x=torch.randn(3, 32)), "batch B = 3 exceeds the KV cache's max batch 2"),
    (dict(n_head=5), "n_head .5. must be positive and divide C"),
    (dict(n_head=0), "n_head .0. must be positive"),
    (dict(eps=float("nan")), "eps must be a finite number >= 0"),
    (dict(eps=-1.0), "eps must be a finite number >= 0"),
    (dict(w2=torch.randn(96, 31)),
     r"'params\[2\] \(attn.c_attn.weight\)' must have shape \[96, 32\]"),
    (dict(w10=torch.randn(32, 64)),
     r"'params\[10\] \(mlp.c_proj.weight\)' must have shape \[32, 128\]"),
    (dict(w0=torch.randn(33)), r"'params\[0\] \(ln_1.weight\)' must have shape \[32\]"),
    (dict(w8=torch.randn(32, 128).t()), r"'params\[8\] \(mlp.c_fc.weight\)' must be contiguous"),
    (dict(w3=torch.randn(96).int()), r"'params\[3\] \(attn.c_attn.bias\)' must have dtype Float"),
    (dict(params=_params(32)[:11]), "'params' must hold the block's 12 tensors"),
    (dict(k=torch.zeros(2, 2, 6, 16)), "'k_cache' must be .maxB, n_head, S, head_dim."),
    (dict(v=torch.zeros(2, 4, 7, 8)), "same shape"),
    (dict(v=torch.zeros(2, 4, 6, 8, dtype=torch.float16)), "'v_cache' must have dtype Float"),
]


@pytest.mark.parametrize("changes, match", BAD)
def test_bad_input(changes, match):
    with pytest.raises((RuntimeError, ValueError), match=match):
        _bad_call(**changes)


@pytest.mark.parametrize("changes, match", BAD)
def test_fake_refuses_what_the_kernel_refuses(changes, match):
    with pytest.raises((RuntimeError, ValueError), match="smallmind::decode_block_: invalid"):
        _bad_call(device="meta", **changes)


def test_bad_argument_types():
    x, k = torch.randn(1, 16), torch.zeros(1, 2, 4, 8)
    with torch.no_grad():
        with pytest.raises(TypeError, match="'pos' must be an int"):
            decode_block_(x, _params(16), k, k.clone(), 1.0, 2, 1e-5)
        with pytest.raises(TypeError, match=r"'params\[4\]' must be a torch.Tensor"):
            decode_block_(x, _params(16)[:4] + [None] + _params(16)[5:], k, k.clone(), 0, 2, 1e-5)


# D1: every int argument at the int64 extremes gives a clear error (or the right answer).
@pytest.mark.parametrize("name", ["pos", "n_head"])
@pytest.mark.parametrize("value", [v for v in INT_EXTREMES if v != 1])
def test_int_extremes_raise(name, value):
    assert_pos_and_n_head_refused(_bad_call, name, value)


# D6: x aliasing a cache or a parameter, or k_cache being v_cache, wrote through the alias.
def test_aliasing_is_refused():
    C, nh, S = 32, 4, 6
    params, k, v = _params(C), torch.zeros(2, nh, S, 8), torch.zeros(2, nh, S, 8)
    cases = [
        (k.view(-1)[:64].view(2, C), params, k, v, "must not share memory"),   # x inside k_cache
        (torch.randn(2, C), params, k, k, "must not share memory"),            # k is v
        (params[4][:2], params, k, v, r"params\[4\]"),                          # x is a weight row
        (torch.randn(2, C), params[:1] + [k.view(-1)[:C]] + params[2:], k, v,  # a bias in the cache
         r"'k_cache' must not share memory with params\[1\]"),
    ]
    for x, p, kc, vc, match in cases:
        with pytest.raises(RuntimeError, match=match):
            ops.decode_block_(x, p, kc, vc, 1, nh, 1e-5)


# D7: a NaN in a cached key was swallowed (exp256 clamped NaN, row_max dropped it); torch
# gives NaN for that sequence. Positions: the 16-wide loop, the 8-wide loop, the scalar tail.
@pytest.mark.parametrize("key", [3, 18, 26])
def test_nan_key_matches_reference(key, isa):
    def edit(x, k, v):
        k[1, 2, key, 0] = float("nan")
    (_, _, _), got, exp = _run_both(2, 32, 4, 30, 2, 27, edit)
    assert exp[0][1].isnan().all() and torch.isfinite(exp[0][0]).all()
    assert_close(got[0], exp[0], rtol=1e-5, atol=1e-5, equal_nan=True)


@settings(max_examples=60, deadline=None)
@given(pos=st.one_of(st.sampled_from(INT_EXTREMES), st.integers(-2, 8)),
       n_head=st.one_of(st.sampled_from(INT_EXTREMES), st.sampled_from([1, 2, 3, 4, 5, 8, 12])),
       b=st.integers(1, 3), seed=st.integers(0, 2**16), isa=st.sampled_from(ISAS))
def test_property_any_pos_and_n_head(pos, n_head, b, seed, isa):
    """Every int64 pos / n_head: the reference's answer, or a ValueError naming it."""
    with use_isa(isa):
        _property_any_pos_and_n_head(pos, n_head, b, seed)


def _property_any_pos_and_n_head(pos, n_head, b, seed):
    C, S, max_b = 24, 7, 3
    g = torch.Generator().manual_seed(seed)
    if not (n_head >= 1 and C % n_head == 0):
        with pytest.raises(ValueError, match="n_head"):
            ops.decode_block_(torch.randn(b, C), _params(C), torch.zeros(max_b, 1, S, C),
                              torch.zeros(max_b, 1, S, C), 0, n_head, 1e-5)
        return
    hs = C // n_head
    x = torch.randn(b, C, generator=g)
    k, v = torch.randn(max_b, n_head, S, hs, generator=g), torch.randn(max_b, n_head, S, hs)
    if not 0 <= pos < S:
        for device, match in (("cpu", "pos must lie"), ("meta", "invalid pos")):
            with pytest.raises(ValueError, match=match):
                ops.decode_block_(x.to(device), [p.to(device) for p in _params(C)],
                                  k.to(device), v.to(device), pos, n_head, 1e-5)
        return
    got, exp = (x.clone(), k.clone(), v.clone()), (x.clone(), k.clone(), v.clone())
    with torch.no_grad():
        decode_block_(got[0], _params(C), got[1], got[2], pos, n_head, 1e-5)
        decode_block_reference(exp[0], _params(C), exp[1], exp[2], pos, n_head, 1e-5)
    for a, e in zip(got, exp):
        assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_cuda_fake_tensors_rejected_naming_the_argument():
    """What torch.compile sees for CUDA inputs (FakeTensors on cuda, no GPU needed)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        params = [torch.empty(p.shape) for p in _params(16)]
        k = torch.empty(1, 2, 4, 8, device="cuda")
        with pytest.raises(RuntimeError, match="'k_cache' is on cuda:0, .* CPU kernels only"):
            decode_block_(torch.empty(1, 16), params, k, torch.empty(1, 2, 4, 8), 0, 2, 1e-5)
