"""The decode step ops on T tokens per sequence (csrc/decode.cpp, decode_step_ with tokens
(B, T)): a prompt's prefill (logits of each sequence's last token) and speculative decoding's
verify (logits of every token), against fused_decode.decode_step_reference, against T one-token
steps, and against the model's allocating forward at that offset; on every ISA, on the
row-batched path and on the blocked GEMM's (B * T >= 8, on weights packed once)."""
import pytest
import torch
from torch.testing import assert_close

from smallmind_torch.fused_decode import block_params, decode_step_reference
from smallmind_torch.model import GPT

from helpers import TINY, ops_binding_or_skip

_decode = ops_binding_or_skip("_decode")
decode_step_ = _decode.decode_step_
ops = torch.ops.smallmind

from ops_isa import isa  # noqa: E402,F401 (a fixture)
from test_ops_decode_step import _call, _caches, _model  # noqa: E402 (the same random models)
from test_ops_decode_step_q4 import _q4  # noqa: E402
from test_ops_decode_step_q8 import _q8  # noqa: E402

C, NH, V, L, S = 32, 2, 50, 2, 40


@pytest.fixture(scope="module")
def model():
    return _model(C, V, L, S)


def _history(m, B, start, g):
    """Caches holding `start` random positions (the reference's and the kernel's copies)."""
    kc = [torch.randn(B, NH, S, C // NH, generator=g) for _ in range(L)]
    vc = [torch.randn(B, NH, S, C // NH, generator=g) for _ in range(L)]
    return kc, vc, [t.clone() for t in kc], [t.clone() for t in vc]


@pytest.mark.parametrize("B, T, start", [(1, 2, 0), (2, 3, 3), (1, 7, 0), (1, 8, 0),
                                         (2, 5, 3), (2, 33, 4), (2, 16, 1)],
                         ids=["T2", "B2-T3-start3", "T7", "T8-gemm", "B2-T5-start3-gemm",
                              "B2-T33-gemm", "B2-T16-gemm"])
@pytest.mark.parametrize("all_logits", [True, False], ids=["verify", "prefill"])
def test_matches_reference(model, B, T, start, all_logits, isa):
    g = torch.Generator().manual_seed(B * 100 + T + start)
    kc, vc, kr, vr = _history(model, B, start, g)
    tokens = torch.randint(0, V, (B, T), generator=g)
    R = T if all_logits else 1
    logits, nxt = torch.empty(B, R, V), torch.empty(B, R, dtype=torch.long)
    ref_logits, ref_nxt = torch.empty(B, R, V), torch.empty(B, R, dtype=torch.long)
    with torch.no_grad():
        out = _call(decode_step_, model, tokens, start, kc, vc, NH, logits, nxt)
        _call(decode_step_reference, model, tokens, start, kr, vr, NH, ref_logits, ref_nxt)
    assert out[0] is logits and out[1] is nxt
    assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(nxt, logits.argmax(-1))
    for got, exp in zip(kc + vc, kr + vr):
        assert_close(got, exp, rtol=1e-4, atol=1e-4)  # positions start .. start + T - 1
        assert torch.equal(got[:, :, :start], exp[:, :, :start])  # the history untouched
        assert torch.equal(got[:, :, start + T:], exp[:, :, start + T:])


@pytest.mark.parametrize("T", [5, 33])
def test_equals_one_token_steps(model, T):
    """T tokens in one call: what T one-token decode steps give, row after row."""
    B = 2
    tokens = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(T))
    kc, vc = _caches(L, B, NH, S, C // NH)
    kr, vr = _caches(L, B, NH, S, C // NH)
    logits, nxt = torch.empty(B, T, V), torch.empty(B, T, dtype=torch.long)
    step_logits, step_nxt = torch.empty(B, 1, V), torch.empty(B, 1, dtype=torch.long)
    with torch.no_grad():
        _call(decode_step_, model, tokens, 0, kc, vc, NH, logits, nxt)
        for t in range(T):
            _call(decode_step_, model, tokens[:, t:t + 1], t, kr, vr, NH, step_logits, step_nxt)
            assert_close(logits[:, t], step_logits[:, 0], rtol=1e-5, atol=1e-5)
    for got, exp in zip(kc + vc, kr + vr):
        assert_close(got, exp, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T", [3, 20])
def test_logits_equal_the_models_forward(T):
    """A prompt prefilled in two calls (5 tokens, then T at offset 5, every logit kept) gives
    the logits of the model's allocating forward over the whole prompt at those positions."""
    torch.manual_seed(0)
    gpt = GPT(TINY).eval()
    tr, c = gpt.transformer, gpt.config
    B, start = 2, 5
    idx = torch.randint(0, c.vocab_size, (B, start + T))
    flat = [p for block in tr.h for p in block_params(block)]
    kc, vc = _caches(c.n_layer, B, c.n_head, c.block_size, c.n_embd // c.n_head)
    args = (tr.wte.weight, tr.wpe.weight, flat, tr.ln_f.weight, tr.ln_f.bias, kc, vc, c.n_head,
            c.layer_norm_epsilon)
    first = (torch.empty(B, 1, c.vocab_size), torch.empty(B, 1, dtype=torch.long))
    logits, nxt = torch.empty(B, T, c.vocab_size), torch.empty(B, T, dtype=torch.long)
    with torch.no_grad():
        expected = gpt.allocating_forward(idx)
        decode_step_(idx[:, :start], 0, *args, *first)
        decode_step_(idx[:, start:], start, *args, logits, nxt)
    assert_close(first[0][:, 0], expected[:, start - 1], rtol=1e-4, atol=1e-4)
    assert_close(logits, expected[:, start:], rtol=1e-4, atol=1e-4)


def test_same_result_for_any_thread_count(model):
    """On both paths (6 rows, 66 rows) each output is computed by one thread in a fixed order."""
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            for T in (3, 33):
                tokens = torch.arange(2 * T).view(2, T) % V
                kc, vc = _caches(L, 2, NH, S, C // NH)
                logits, nxt = torch.empty(2, T, V), torch.empty(2, T, dtype=torch.long)
                with torch.no_grad():
                    _call(decode_step_, model, tokens, 0, kc, vc, NH, logits, nxt)
                results.append((logits, nxt, kc[1]))
    finally:
        torch.set_num_threads(threads)
    half = len(results) // 2
    for one, many in zip(results[:half], results[half:]):
        for a, b in zip(one, many):
            assert torch.equal(a, b)


def test_a_weight_changed_in_place_is_packed_again(model):
    """The blocked GEMM's path multiplies weights packed once (the packed-weight cache): a
    weight changed in place (its version) is packed again, never read stale."""
    m = {**model, "block_params": [p.clone() for p in model["block_params"]]}
    tokens = torch.arange(16).view(1, 16) % V
    outputs = []
    for scale in (1.0, 2.0):
        with torch.no_grad():
            m["block_params"][2].mul_(scale)  # block 0's c_attn weight
            kc, vc = _caches(L, 1, NH, S, C // NH)
            kr, vr = [t.clone() for t in kc], [t.clone() for t in vc]
            logits, nxt = torch.empty(1, 16, V), torch.empty(1, 16, dtype=torch.long)
            expected = torch.empty(1, 16, V)
            _call(decode_step_, m, tokens, 0, kc, vc, NH, logits, nxt)
            _call(decode_step_reference, m, tokens, 0, kr, vr, NH, expected, nxt.clone())
        assert_close(logits, expected, rtol=1e-4, atol=1e-4)
        outputs.append(logits.clone())
    assert not torch.allclose(outputs[0], outputs[1])


@pytest.mark.parametrize("fmt", ["int8", "w8a8", "int4"])
@pytest.mark.parametrize("T", [4, 33])
def test_low_precision_weights(fmt, T, isa):
    """decode_step_q8_ / decode_step_q4_ on T tokens: int8 weight-only against the reference;
    the formats that round the activations against T one-token steps of the same op (the
    reference's int8 rounding of a row can land one step apart)."""
    B, C4, V4 = 2, 64, 40
    m = _model(C4, V4, L, S)
    if fmt == "int4":
        lowp, op = _q4(m), _decode.decode_step_q4_
    else:
        lowp, op = (*_q8(m), fmt == "w8a8"), _decode.decode_step_q8_
    tokens = torch.randint(0, V4, (B, T), generator=torch.Generator().manual_seed(T))
    kc, vc = _caches(L, B, NH, S, C4 // NH)
    kr, vr = _caches(L, B, NH, S, C4 // NH)
    logits, nxt = torch.empty(B, T, V4), torch.empty(B, T, dtype=torch.long)
    ref, ref_nxt = torch.empty(B, T, V4), torch.empty(B, T, dtype=torch.long)
    with torch.no_grad():
        _call(op, m, tokens, 0, kc, vc, NH, logits, nxt, *lowp)
        if fmt == "int8":
            _call(decode_step_reference, m, tokens, 0, kr, vr, NH, ref, ref_nxt, *lowp)
        else:
            step, step_nxt = torch.empty(B, 1, V4), torch.empty(B, 1, dtype=torch.long)
            for t in range(T):
                _call(op, m, tokens[:, t:t + 1], t, kr, vr, NH, step, step_nxt, *lowp)
                ref[:, t] = step[:, 0]
    assert_close(logits, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    assert torch.equal(nxt, logits.argmax(-1))


def test_opcheck(model):
    kc, vc = _caches(L, 2, NH, 12, C // NH)
    tokens = torch.tensor([[1, 5, 7], [2, 3, 4]])
    for R in (3, 1):  # verify, prefill
        args = (tokens, 2, model["wte"], model["wpe"], model["block_params"], model["ln_f_w"],
                model["ln_f_b"], kc, vc, NH, 1e-5, torch.empty(2, R, V),
                torch.empty(2, R, dtype=torch.long))
        torch.library.opcheck(ops.decode_step_.default, args,
                              test_utils=("test_schema", "test_faketensor"))
