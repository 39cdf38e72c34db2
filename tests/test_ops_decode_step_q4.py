"""Whole-model decode step on int4 weights (csrc/decode.cpp, decode_step_q4_) against
fused_decode.decode_step_reference with the same int4 weights, on every ISA; opcheck, the fake and
bad input."""
import pytest
import torch
from torch.testing import assert_close

from smallmind_torch.decode_layout import Q8_PARAMS
from smallmind_torch.fused_decode import decode_step_reference
from smallmind_torch.weight_formats import quantize_int4

from helpers import allocations, ops_binding_or_skip

_decode = ops_binding_or_skip("_decode")
decode_step_q4_ = _decode.decode_step_q4_

from ops_isa import isa  # noqa: E402,F401 (a fixture)
from test_ops_decode_step import _caches, _model  # noqa: E402 (the same random models)


def _q4(m, group_size=32):
    """Per block c_attn, attn.c_proj, c_fc, mlp.c_proj, then the (tied) lm head, as int4."""
    n_layer = len(m["block_params"]) // 12
    mats = [m["block_params"][12 * l + i] for l in range(n_layer) for i in Q8_PARAMS] + [m["wte"]]
    weights = [quantize_int4(w, group_size) for w in mats]
    return [w.packed for w in weights], [w.scales for w in weights], group_size


def _call(fn, m, q4, tokens, pos, kc, vc, n_head, logits, nxt):
    return fn(tokens, pos, m["wte"], m["wpe"], m["block_params"], m["ln_f_w"], m["ln_f_b"], kc,
              vc, n_head, 1e-5, logits, nxt, *q4)


@pytest.mark.parametrize("shape, group_size", [((1, 64, 4, 100, 2, 6, 1), 32),
                                               ((3, 64, 2, 37, 2, 5, 4), 64),
                                               ((2, 96, 3, 50, 1, 4, 2), 32)],
                         ids=["B1", "B3-G64", "C96"])
def test_matches_reference_at_every_position(shape, group_size, isa):
    """The kernel's LayerNorm and attention round differently from PyTorch's, and now and then
    an activation lands on the other side of an int8 rounding boundary (one step, max|row| /
    127): the logits agree to 1e-4 of their scale but where such a step moved them. The
    reference goes on from the kernel's caches at each step."""
    B, C, nh, V, L, S, max_b = shape
    m = _model(C, V, L, S)
    q4 = _q4(m, group_size)
    kc, vc = _caches(L, max_b, nh, S, C // nh)
    g = torch.Generator().manual_seed(1)
    close = []
    for pos in range(S):
        tokens = torch.randint(0, V, (B,), generator=g)
        rkc, rvc = [t.clone() for t in kc], [t.clone() for t in vc]
        logits, nxt = torch.empty(B, V), torch.empty(B, dtype=torch.long)
        rlogits, rnxt = torch.empty(B, V), torch.empty(B, dtype=torch.long)
        with torch.no_grad():
            _call(decode_step_q4_, m, q4, tokens, pos, kc, vc, nh, logits, nxt)
            decode_step_reference(tokens, pos, m["wte"], m["wpe"], m["block_params"], m["ln_f_w"],
                                  m["ln_f_b"], rkc, rvc, nh, 1e-5, rlogits, rnxt,
                                  weights_q4=q4[0], scales_q4=q4[1], group_size=group_size)
        scale = float(rlogits.abs().max())
        assert_close(logits, rlogits, rtol=0, atol=0.05 * scale)
        assert torch.equal(nxt, logits.argmax(-1))
        close.append(float(((logits - rlogits).abs() <= 1e-4 * scale).float().mean()))
    assert sum(close) / len(close) > 0.9


def test_allocates_nothing_after_warm_up():
    m = _model(32, 20, 2, 8)
    q4 = _q4(m)
    kc, vc = _caches(2, 1, 2, 8, 16)
    logits, nxt = torch.empty(1, 20), torch.empty(1, dtype=torch.long)
    tokens = torch.tensor([3])
    with torch.no_grad():
        _call(decode_step_q4_, m, q4, tokens, 0, kc, vc, 2, logits, nxt)  # scratch grows
        count, nbytes = allocations(lambda: _call(decode_step_q4_, m, q4, tokens, 1, kc, vc, 2,
                                                  logits, nxt))
    assert (count, nbytes) == (0, 0)


def test_opcheck():
    m = _model(32, 20, 2, 8)
    kc, vc = _caches(2, 1, 2, 8, 16)
    args = (torch.tensor([3]), 2, m["wte"], m["wpe"], m["block_params"], m["ln_f_w"], m["ln_f_b"],
            kc, vc, 2, 1e-5, torch.empty(1, 20), torch.empty(1, dtype=torch.long), *_q4(m))
    torch.library.opcheck(torch.ops.smallmind.decode_step_q4_.default, args)


def _bad(device="cpu", drop=0, dtype=None, shape_of=None, group_size=32):
    m = _model(64, 20, 2, 8)
    w, s, _ = _q4(m)
    w, s = w[:len(w) - drop], s[:len(s) - drop]
    if dtype is not None:
        w[1] = w[1].to(dtype)
    if shape_of is not None:
        s[shape_of] = s[shape_of][:, :-1].contiguous()
    kc, vc = _caches(2, 1, 2, 8, 32)
    to = (lambda t: t.to(device)) if device != "cpu" else (lambda t: t)
    m = {k: (to(v) if isinstance(v, torch.Tensor) else [to(t) for t in v]) for k, v in m.items()}
    with torch.no_grad():
        _call(decode_step_q4_, m, ([to(t) for t in w], [to(t) for t in s], group_size),
              to(torch.tensor([3])), 0, [to(t) for t in kc], [to(t) for t in vc], 2,
              to(torch.empty(1, 20)), to(torch.empty(1, dtype=torch.long)))


@pytest.mark.parametrize("kwargs, cpu_match, meta_match", [
    (dict(drop=1), "must each hold 4 tensors per block", "invalid 'weights_q4' and 'scales_q4'"),
    (dict(dtype=torch.int8), r"'weights_q4\[1\]' must have dtype Byte",
     r"'weights_q4\[1\]' must have dtype Byte"),
    (dict(shape_of=2), r"'scales_q4\[2\]' must have shape", r"invalid 'scales_q4\[2\]'"),
    (dict(group_size=48), "group_size must be a positive multiple of 32", "invalid group_size"),
    (dict(group_size=128), r"group_size \(128\) must divide C", "invalid group_size"),
])
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_bad_input(kwargs, cpu_match, meta_match, device):
    """The CPU kernel says what is wrong; the fake (meta) refuses the same input."""
    with pytest.raises((RuntimeError, ValueError),
                       match=cpu_match if device == "cpu" else meta_match):
        _bad(device=device, **kwargs)
