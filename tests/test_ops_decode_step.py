"""Whole-model decode step op (csrc/decode.cpp, decode_step_) against
fused_decode.decode_step_reference."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.testing import assert_close

from smallmind_torch.fused_decode import decode_step_reference

from helpers import INT_EXTREMES, allocations, assert_pos_and_n_head_refused, ops_binding_or_skip

decode_step_ = ops_binding_or_skip("_decode").decode_step_
ops = torch.ops.smallmind

from ops_isa import ISAS, isa, use_isa  # noqa: E402,F401 (isa: a fixture)



def _model(C, V, n_layer, P, seed=0):
    """Random weights: wte (V, C), wpe (P, C), 12 tensors per block, ln_f; weights scaled
    1/sqrt(fan_in) so activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g) * (0.2 if len(s) == 1 else s[1] ** -0.5)

    params = []
    for _ in range(n_layer):
        params += [1.0 + r(C), r(C), r(3 * C, C), r(3 * C), r(C, C), r(C), 1.0 + r(C), r(C),
                   r(4 * C, C), r(4 * C), r(C, 4 * C), r(C)]
    wte = torch.randn(V, C, generator=g)
    wpe = torch.randn(P, C, generator=g) * 0.5
    return dict(wte=wte, wpe=wpe, block_params=params, ln_f_w=1.0 + r(C), ln_f_b=r(C))


def _caches(n_layer, max_b, n_head, S, hs):
    return ([torch.zeros(max_b, n_head, S, hs) for _ in range(n_layer)],
            [torch.zeros(max_b, n_head, S, hs) for _ in range(n_layer)])


def _call(fn, m, tokens, pos, kc, vc, n_head, logits, nxt, *rest, eps=1e-5):
    return fn(tokens, pos, m["wte"], m["wpe"], m["block_params"], m["ln_f_w"], m["ln_f_b"], kc,
              vc, n_head, eps, logits, nxt, *rest)


# (B, C, n_head, V, n_layer, S, maxB)
SHAPES = [
    (1, 256, 8, 512, 4, 40, 1),    # the seed model's widths
    (3, 48, 3, 97, 2, 40, 4),      # B = 3 (a row pair and an odd row), maxB > B
    (1, 20, 20, 33, 2, 17, 2),     # head size 1, C not a multiple of 16
    (2, 36, 1, 50, 1, 12, 2),      # one head, C = 36
    (5, 64, 4, 300, 1, 9, 5),      # B = 5, V not a multiple of 16
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-C{}-nh{}-V{}-L{}-S{}".format(*s[:6]))
def test_matches_reference_at_every_position(shape, isa):
    """Decode positions 0..S-1 in a row, as generation does: every step's logits, argmax and the
    caches it wrote equal the reference's."""
    B, C, nh, V, L, S, max_b = shape
    m = _model(C, V, L, S + 3)
    kc, vc = _caches(L, max_b, nh, S, C // nh)
    kr, vr = _caches(L, max_b, nh, S, C // nh)
    g = torch.Generator().manual_seed(1)
    logits, nxt = torch.empty(B, 1, V), torch.empty(B, 1, dtype=torch.long)
    ref_logits, ref_nxt = torch.empty(B, V), torch.empty(B, dtype=torch.long)
    with torch.no_grad():
        for pos in range(S):
            tokens = torch.randint(0, V, (B, 1), generator=g)
            out = _call(decode_step_, m, tokens, pos, kc, vc, nh, logits, nxt)
            assert out[0] is logits and out[1] is nxt
            _call(decode_step_reference, m, tokens.view(B), pos, kr, vr, nh, ref_logits, ref_nxt)
            assert_close(logits.view(B, V), ref_logits, rtol=1e-4, atol=1e-4)
            assert torch.equal(nxt.view(B), logits.view(B, V).argmax(-1))
            top2 = ref_logits.topk(2, dim=-1).values
            clear = (top2[:, 0] - top2[:, 1]) > 1e-3  # no near-tie: the same token as torch
            assert torch.equal(nxt.view(B)[clear], ref_nxt[clear])
    for got, exp in zip(kc + vc, kr + vr):
        assert_close(got, exp, rtol=1e-4, atol=1e-4)
        assert torch.equal(got[B:], exp[B:])  # rows of unused sequences untouched (zeros)


def test_seed_shape_full_context():
    """All 128 positions of the seed model's cache (blocks of keys past 8, 16, 32, 64)."""
    m = _model(256, 512, 4, 128)
    kc, vc = _caches(4, 1, 8, 128, 32)
    kr, vr = _caches(4, 1, 8, 128, 32)
    logits, nxt = torch.empty(1, 512), torch.empty(1, dtype=torch.long)
    ref_logits, ref_nxt = torch.empty(1, 512), torch.empty(1, dtype=torch.long)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for pos in range(128):
            tokens = torch.randint(0, 512, (1,), generator=g)
            _call(decode_step_, m, tokens, pos, kc, vc, 8, logits, nxt)
            _call(decode_step_reference, m, tokens, pos, kr, vr, 8, ref_logits, ref_nxt)
            assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
            assert torch.equal(nxt, logits.argmax(-1))


def test_same_result_for_any_thread_count():
    m = _model(256, 512, 2, 8)
    tokens = torch.tensor([5, 7, 11])
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            kc, vc = _caches(2, 3, 8, 8, 32)
            logits, nxt = torch.empty(3, 512), torch.empty(3, dtype=torch.long)
            with torch.no_grad():
                for pos in range(4):
                    _call(decode_step_, m, tokens, pos, kc, vc, 8, logits, nxt)
            results.append((logits.clone(), nxt.clone(), kc[1].clone()))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)  # each output computed by one thread, in a fixed order


def test_argmax_rule_ties_and_nan(isa):
    """torch.argmax's rule: the first maximum; a NaN wins, the first NaN."""
    C, V = 16, 8
    m = _model(C, V, 1, 4)
    u = torch.randn(C)
    m["wte"] = torch.outer(torch.tensor([1.0, 3.0, -2.0, 3.0, -2.0, 0.5, 0.0, 1.0]), u)
    kc, vc = _caches(1, 1, 2, 4, 8)
    logits, nxt = torch.empty(1, V), torch.empty(1, dtype=torch.long)
    with torch.no_grad():
        _call(decode_step_, m, torch.tensor([0]), 0, kc, vc, 2, logits, nxt)
        assert logits[0, 1] == logits[0, 3] or logits[0, 2] == logits[0, 4]
        assert nxt.item() in (1, 2) and nxt.item() == logits.argmax(-1).item()
        m["wte"][6] = float("nan")
        m["wte"][5] = float("nan")
        _call(decode_step_, m, torch.tensor([0]), 1, kc, vc, 2, logits, nxt)
        assert logits[0, 5].isnan() and nxt.item() == 5 == logits.argmax(-1).item()
        m["ln_f_w"][0] = float("nan")  # every logit NaN
        _call(decode_step_, m, torch.tensor([0]), 2, kc, vc, 2, logits, nxt)
        assert logits.isnan().all() and nxt.item() == 0 == logits.argmax(-1).item()


def test_allocates_nothing_after_warm_up():
    m = _model(64, 100, 2, 8)
    kc, vc = _caches(2, 2, 4, 8, 16)
    logits, nxt = torch.empty(2, 100), torch.empty(2, dtype=torch.long)
    tokens = torch.tensor([3, 4])
    with torch.no_grad():
        _call(decode_step_, m, tokens, 0, kc, vc, 4, logits, nxt)  # warm-up: scratch grows
        count, nbytes = allocations(lambda: _call(decode_step_, m, tokens, 1, kc, vc, 4, logits,
                                                  nxt))
    assert (count, nbytes) == (0, 0)


def test_requires_no_grad():
    m = _model(16, 10, 1, 4)
    m["block_params"][2].requires_grad_()
    kc, vc = _caches(1, 1, 2, 4, 8)
    args = (torch.tensor([1]), 0, kc, vc, 2, torch.empty(1, 10), torch.empty(1, dtype=torch.long))
    with pytest.raises(RuntimeError, match="inference only"):
        _call(decode_step_, m, *args)
    with torch.no_grad():
        _call(decode_step_, m, *args)


def test_opcheck():
    m = _model(32, 20, 2, 6)
    kc, vc = _caches(2, 3, 4, 6, 8)
    args = (torch.tensor([[1], [5]]), 2, m["wte"], m["wpe"], m["block_params"], m["ln_f_w"],
            m["ln_f_b"], kc, vc, 4, 1e-5, torch.empty(2, 1, 20),
            torch.empty(2, 1, dtype=torch.long))
    torch.library.opcheck(ops.decode_step_.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def _bad_call(device="cpu", **changes):
    C, nh, S, maxB, V, L = 32, 4, 6, 2, 20, 2
    m = _model(C, V, L, 8)
    kc, vc = _caches(L, maxB, nh, S, C // nh)
    kw = dict(tokens=torch.tensor([1, 2]), pos=1, wte=m["wte"], wpe=m["wpe"],
              block_params=m["block_params"], ln_f_w=m["ln_f_w"], ln_f_b=m["ln_f_b"],
              k_caches=kc, v_caches=vc, n_head=nh, eps=1e-5, logits=torch.empty(2, V),
              next_tokens=torch.empty(2, dtype=torch.long))
    for name, value in changes.items():
        if name.startswith("p") and name[1:].isdigit():
            kw["block_params"] = list(kw["block_params"])
            kw["block_params"][int(name[1:])] = value
        elif name.startswith("k") and name[1:].isdigit():
            kw["k_caches"] = list(kw["k_caches"])
            kw["k_caches"][int(name[1:])] = value
        else:
            kw[name] = value
    to = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
    ops.decode_step_.default(
        to(kw["tokens"]), kw["pos"], to(kw["wte"]), to(kw["wpe"]),
        [to(p) for p in kw["block_params"]], to(kw["ln_f_w"]), to(kw["ln_f_b"]),
        [to(t) for t in kw["k_caches"]], [to(t) for t in kw["v_caches"]], kw["n_head"],
        kw["eps"], to(kw["logits"]), to(kw["next_tokens"]))


BAD = [
    (dict(wte=torch.randn(20, 32).double()), "'wte' must have dtype Float"),
    (dict(wte=torch.randn(32, 20).t()), "'wte' must be contiguous"),
    (dict(wpe=torch.randn(8, 31)), r"wpe.size\(1\) = 31 but wte.size\(1\) \(C\) = 32"),
    (dict(n_head=5), "n_head .5. must be positive and divide C"),
    (dict(eps=float("inf")), "eps must be a finite number >= 0"),
    (dict(block_params=_model(32, 20, 2, 8)["block_params"][:13]),
     "'block_params' must hold 12 tensors per block"),
    (dict(k_caches=[torch.zeros(2, 4, 6, 8)]), "one cache per block .2., got 1 and 2"),
    (dict(p14=torch.randn(96, 31)),
     r"'block_params\[14\] \(block 1 attn.c_attn.weight\)' must have shape \[96, 32\]"),
    (dict(p20=torch.randn(128, 32).t()),
     r"'block_params\[20\] \(block 1 mlp.c_fc.weight\)' must be contiguous"),
    (dict(ln_f_b=torch.randn(33)), "'ln_f_b' must have shape"),
    (dict(k1=torch.zeros(2, 2, 6, 16)), r"'k_caches\[1\]' must be .maxB, n_head, S, head_dim."),
    (dict(k1=torch.zeros(2, 4, 7, 8)), "every cache must have the shape of k_caches"),
    (dict(tokens=torch.tensor([1.0, 2.0])), "'tokens' must have dtype Long"),
    (dict(tokens=torch.ones(2, 1, 1, dtype=torch.long)), r"'tokens' must be \(B,\) or \(B, T\)"),
    (dict(tokens=torch.ones(2, 0, dtype=torch.long)), r"'tokens' must be \(B,\) or \(B, T\)"),
    (dict(tokens=torch.ones(2, 5, dtype=torch.long), pos=2, logits=torch.empty(2, 5, 20),
          next_tokens=torch.empty(2, 5, dtype=torch.long)), r"pos must lie in \[0, 1\]"),
    (dict(tokens=torch.ones(2, 3, dtype=torch.long)),
     r"'logits' must be \(B, T, vocab\) = \(2, 3, 20\) for every token's or \(B, 1, vocab\)"),
    (dict(tokens=torch.ones(2, 3, dtype=torch.long), logits=torch.empty(2, 3, 20),
          next_tokens=torch.empty(2, 1, dtype=torch.long)), r"'next_tokens' must be \(B, 3\)"),
    (dict(tokens=torch.tensor([1, 2, 3]), logits=torch.empty(3, 20),
          next_tokens=torch.empty(3, dtype=torch.long)), "batch B = 3 exceeds"),
    (dict(pos=6), r"pos must lie in \[0, 5\]"),
    (dict(pos=-1), r"pos must lie in \[0, 5\]"),
    (dict(wpe=torch.randn(3, 32), pos=4),
     r"pos must lie in \[0, 2\] \(the caches hold 6 positions, wpe 3;"),
    (dict(logits=torch.empty(2, 21)), r"'logits' must be \(B, T, vocab\) = \(2, 1, 20\)"),
    (dict(logits=torch.empty(20, 2).t()), "'logits' must be contiguous"),
    (dict(next_tokens=torch.empty(2, 2, dtype=torch.long)),
     r"'next_tokens' must be \(B, 1\) or \(B,\)"),
    (dict(next_tokens=torch.empty(2)), "'next_tokens' must have dtype Long"),
]


@pytest.mark.parametrize("changes, match", BAD)
def test_bad_input(changes, match):
    with pytest.raises((RuntimeError, ValueError), match=match):
        _bad_call(**changes)


@pytest.mark.parametrize("changes, match", BAD)
def test_fake_refuses_what_the_kernel_refuses(changes, match):
    with pytest.raises((RuntimeError, ValueError), match="smallmind::decode_step_: invalid"):
        _bad_call(device="meta", **changes)


@pytest.mark.parametrize("bad", [20, -1, 2**63 - 1, -2**63])
def test_token_ids_out_of_range(bad):
    with pytest.raises(RuntimeError, match=rf"token id out of range: tokens\[1\] = {bad}, "
                                           r"allowed range is \[0, 20\)"):
        _bad_call(tokens=torch.tensor([3, bad]))


@pytest.mark.parametrize("name", ["pos", "n_head"])
@pytest.mark.parametrize("value", [v for v in INT_EXTREMES if v != 1])
def test_int_extremes_raise(name, value):
    assert_pos_and_n_head_refused(_bad_call, name, value)


def test_aliasing_is_refused():
    m = _model(32, 20, 2, 8)
    kc, vc = _caches(2, 2, 4, 6, 8)
    tokens = torch.tensor([1, 2])

    def call(**kw):
        a = dict(tokens=tokens, kc=kc, vc=vc, logits=torch.empty(2, 20),
                 nxt=torch.empty(2, dtype=torch.long), m=m)
        a.update(kw)
        _call(ops.decode_step_, a["m"], a["tokens"], 1, a["kc"], a["vc"], 4, a["logits"], a["nxt"])

    bias_in_cache = dict(m, block_params=m["block_params"][:1] + [kc[1].view(-1)[:32]]
                         + m["block_params"][2:])
    cases = [
        (dict(logits=kc[0].view(-1)[:40].view(2, 20)), r"'logits' must not share memory with "
                                                        r"k_caches\[0\]|'k_caches\[0\]' must not"),
        (dict(vc=[kc[0], vc[1]]), r"k_caches\[0\]' must not share memory with v_caches\[0\]|"
                                  r"v_caches\[0\]' must not share memory with k_caches\[0\]"),
        (dict(nxt=tokens), "'next_tokens' must not share memory with tokens"),
        (dict(logits=m["wte"].view(-1)[:40].view(2, 20)),
         "'logits' must not share memory with wte"),
        (dict(m=bias_in_cache), r"'k_caches\[1\]' must not share memory with block_params\[1\]"),
        (dict(kc=[kc[0], kc[0]]), r"'k_caches\[0\]' must not share memory with k_caches\[1\]|"
                                  r"'k_caches\[1\]' must not share memory with k_caches\[0\]"),
    ]
    with torch.no_grad():
        for kw, match in cases:
            with pytest.raises(RuntimeError, match=match):
                call(**kw)
        call()  # nothing shared: fine


def test_bad_argument_types():
    m = _model(16, 10, 1, 4)
    kc, vc = _caches(1, 1, 2, 4, 8)
    with torch.no_grad():
        with pytest.raises(TypeError, match="'pos' must be an int"):
            _call(decode_step_, m, torch.tensor([1]), 1.0, kc, vc, 2, torch.empty(1, 10),
                  torch.empty(1, dtype=torch.long))
        with pytest.raises(RuntimeError, match="'tokens' must have dtype Long"):
            _call(decode_step_, m, torch.tensor([1], dtype=torch.int32), 1, kc, vc, 2,
                  torch.empty(1, 10), torch.empty(1, dtype=torch.long))


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 3), nh=st.sampled_from([1, 2, 3, 6]), hs=st.integers(1, 9),
       V=st.integers(1, 40), L=st.integers(1, 2), pos=st.integers(0, 5),
       seed=st.integers(0, 2**16), isa=st.sampled_from(ISAS))
def test_property_matches_reference(B, nh, hs, V, L, pos, seed, isa):
    """Random caches (a history of pos tokens) and shapes: the reference's logits and argmax."""
    C, S = nh * hs, 6
    m = _model(C, V, L, S, seed)
    g = torch.Generator().manual_seed(seed)
    kc = [torch.randn(3, nh, S, hs, generator=g) for _ in range(L)]
    vc = [torch.randn(3, nh, S, hs, generator=g) for _ in range(L)]
    kr, vr = [t.clone() for t in kc], [t.clone() for t in vc]
    tokens = torch.randint(0, V, (B,), generator=g)
    logits, nxt = torch.empty(B, V), torch.empty(B, dtype=torch.long)
    ref_logits, ref_nxt = torch.empty(B, V), torch.empty(B, dtype=torch.long)
    with use_isa(isa), torch.no_grad():
        _call(decode_step_, m, tokens, pos, kc, vc, nh, logits, nxt)
    with torch.no_grad():
        _call(decode_step_reference, m, tokens, pos, kr, vr, nh, ref_logits, ref_nxt)
    assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(nxt, logits.argmax(-1))
    for layer, (k, v, k_ref, v_ref) in enumerate(zip(kc, vc, kr, vr)):
        # the first layer's k, v come from the embeddings; a later layer's carry the rounding
        # of the layers before
        tol = 1e-5 if layer == 0 else 1e-4
        assert_close(k, k_ref, rtol=tol, atol=tol)
        assert_close(v, v_ref, rtol=tol, atol=tol)


def test_cuda_fake_tensors_rejected_naming_the_argument():
    """What torch.compile sees for CUDA inputs (FakeTensors on cuda, no GPU needed)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        m = {k: (v if k != "block_params" else v) for k, v in _model(16, 10, 1, 4).items()}
        m = {k: ([torch.empty(p.shape) for p in v] if k == "block_params" else torch.empty(v.shape))
             for k, v in m.items()}
        m["wpe"] = torch.empty(4, 16, device="cuda")
        kc, vc = _caches(1, 1, 2, 4, 8)
        with pytest.raises(RuntimeError, match="'wpe' is on cuda:0, .* CPU kernels only"):
            _call(decode_step_, m, torch.tensor([1]), 0, kc, vc, 2, torch.empty(1, 10),
                  torch.empty(1, dtype=torch.long))
