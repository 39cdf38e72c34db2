"""Fused decode block (ops/decode.cpp) against its PyTorch reference, and the fused_decode switch."""
import pytest
import torch
from torch.testing import assert_close

from smallmind_torch import GPT, PHASES, ModelConfig, OptConfig
from smallmind_torch.config import MAX_BY_DEVICE

from conftest import ops_binding_or_skip

_binding = ops_binding_or_skip("_decode")
block_tensors, decode_block_ = _binding.block_tensors, _binding.decode_block_
decode_block_reference, decode_block_tensors_ = _binding.decode_block_reference, _binding.decode_block_tensors_

from test_workspace import allocations

FUSED = MAX_BY_DEVICE["cpu"][1].replace(fused_decode=True)


def _params(C):
    """Random block parameters, weights scaled 1/sqrt(fan_in) so activations stay O(1)."""
    g = torch.Generator().manual_seed(C)
    r = lambda *s: torch.randn(*s, generator=g) * (0.2 if len(s) == 1 else s[1] ** -0.5)  # noqa: E731
    return (1.0 + r(C), r(C), r(3 * C, C), r(3 * C), r(C, C), r(C), 1.0 + r(C), r(C),
            r(4 * C, C), r(4 * C), r(C, 4 * C), r(C))


def _run_both(B, C, n_head, S, maxB, pos):
    torch.manual_seed(pos + 17 * B)
    hs = C // n_head
    params = _params(C)
    x = torch.randn(B, C)
    k = torch.randn(maxB, n_head, S, hs)
    v = torch.randn(maxB, n_head, S, hs)
    got = (x.clone(), k.clone(), v.clone())
    exp = (x.clone(), k.clone(), v.clone())
    decode_block_tensors_(got[0], *params, got[1], got[2], pos, n_head, 1e-5)
    decode_block_reference(exp[0], *params, exp[1], exp[2], pos, n_head, 1e-5)
    return (x, k, v), got, exp


@pytest.mark.parametrize("B, C, n_head, S, maxB", [
    (1, 256, 8, 128, 1), (3, 256, 8, 40, 4), (1, 48, 3, 9, 2), (3, 48, 3, 9, 3), (2, 64, 1, 5, 2),
    (5, 40, 5, 7, 6),  # B > 4: the packed GEMM path; hs = 8
])
def test_matches_reference(B, C, n_head, S, maxB):
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


def test_block_module_form_matches_explicit_tensors():
    model = GPT(ModelConfig(n_layer=1, n_head=4, n_embd=32, vocab_size=16, block_size=8)).eval()
    block = model.transformer.h[0]
    x = torch.randn(2, 32)
    k, v = torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)
    x2, k2, v2 = x.clone(), k.clone(), v.clone()
    with torch.no_grad():
        decode_block_(x, block, k, v, 3, 4)
        decode_block_reference(x2, *block_tensors(block), k2, v2, 3, 4, block.ln_1.eps)
    assert_close(x, x2)
    assert_close(k, k2)


def test_requires_no_grad():
    params = [p.requires_grad_() for p in _params(16)]
    with pytest.raises(RuntimeError, match="inference only"):
        decode_block_tensors_(torch.randn(1, 16), *params, torch.zeros(1, 2, 4, 8),
                              torch.zeros(1, 2, 4, 8), 0, 2)


def test_opcheck():
    C, nh, S = 32, 4, 6
    args = (torch.randn(2, C), *_params(C), torch.randn(3, nh, S, C // nh),
            torch.randn(3, nh, S, C // nh), 2, nh, 1e-5)
    torch.library.opcheck(torch.ops.smallmind.decode_block_.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def _bad_call(**changes):
    C, nh, S, maxB, B = 32, 4, 6, 2, 2
    kw = dict(x=torch.randn(B, C), params=list(_params(C)), k=torch.zeros(maxB, nh, S, C // nh),
              v=torch.zeros(maxB, nh, S, C // nh), pos=1, n_head=nh)
    for name, value in changes.items():
        if name.startswith("w"):
            kw["params"][int(name[1:])] = value
        else:
            kw[name] = value
    torch.ops.smallmind.decode_block_.default(kw["x"], *kw["params"], kw["k"], kw["v"],
                                              kw["pos"], kw["n_head"], 1e-5)


@pytest.mark.parametrize("changes, match", [
    (dict(x=torch.randn(2, 32, dtype=torch.float64)), "'x' must have dtype Float"),
    (dict(x=torch.randn(32, 2).t()), "'x' must be contiguous"),
    (dict(x=torch.randn(2, 1, 32)), "'x' must be 2-D"),
    (dict(pos=6), r"pos must lie in \[0, 5\]"),
    (dict(pos=-1), r"pos must lie in \[0, 5\]"),
    (dict(x=torch.randn(3, 32)), "batch B = 3 exceeds the KV cache's max batch 2"),
    (dict(n_head=5), "n_head .5. must be positive and divide C"),
    (dict(w2=torch.randn(96, 31)), r"'attn_w' must have shape \[96, 32\]"),
    (dict(w10=torch.randn(32, 64)), r"'mlp_proj_w' must have shape \[32, 128\]"),
    (dict(w0=torch.randn(33)), r"'ln1_w' must have shape \[32\]"),
    (dict(w8=torch.randn(32, 128).t()), "'fc_w' must be contiguous"),
    (dict(k=torch.zeros(2, 2, 6, 16)), "'k_cache' must be .maxB, n_head, S, head_dim."),
    (dict(v=torch.zeros(2, 4, 7, 8)), "same shape"),
    (dict(v=torch.zeros(2, 4, 6, 8, dtype=torch.float16)), "'v_cache' must have dtype Float"),
])
def test_bad_input(changes, match):
    with pytest.raises(RuntimeError, match=match):
        _bad_call(**changes)
