"""Every linear op family at its extremes, on every ISA path this CPU runs, against a float64
reference: int8 weights of -128 and 127 (the op takes any int8, though quantize_per_channel
never gives -128), K = 1, M on both sides of the library-GEMM threshold (32 rows: a prefill),
zero-size. The int8 ops against their weights dequantized in float64; w8a8 against exact
int64 sums of its own int8 rows; the fused int8 decode step with a -128 in every matrix."""
import itertools

import pytest
import torch
from torch.testing import assert_close

from smallmind_torch import GPT, ModelConfig
from smallmind_torch.config import MAX_INT8_CANDIDATES
from smallmind_torch.fused_decode import decode_step_reference
from smallmind_torch.weight_formats import quantize_rows, to_bf16

from helpers import ops_binding_or_skip

q8 = ops_binding_or_skip("_linear_q8")
bf16 = ops_binding_or_skip("_linear_bf16")
w8a8 = ops_binding_or_skip("_linear_w8a8")
gemm = ops_binding_or_skip("_gemm")

from ops_isa import isa, use_isa  # noqa: E402,F401 (isa: a fixture)

ROWS = (0, 1, 31, 32, 33)  # M: decode rows, and the library's GEMM from 32 rows on
DEPTHS = (1, 31, 64)       # K: one, a vector tail, whole vectors
WIDTHS = (0, 1, 17)        # N
SHAPES = list(itertools.product(ROWS, DEPTHS, WIDTHS))


def _int8_weight(N, K, g):
    """Random int8 (N, K) holding both extremes in every row (when K allows)."""
    w = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int16).to(torch.int8)
    if K:
        w[:, 0] = -128
        w[:, -1] = 127 if K > 1 else w[:, -1]
    return w


def _inputs(M, K, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g)
    scale = torch.rand(N, generator=g) * 0.02 + 1e-3
    return x, _int8_weight(N, K, g), scale, torch.randn(N, generator=g)


def _close(y, expected, K):
    assert y.shape == expected.shape and y.dtype == torch.float32
    assert_close(y.double(), expected, rtol=1e-5, atol=1e-5 * (1 + K ** 0.5))


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_linear_q8_at_the_extremes(M, K, N, isa):
    x, w_q, scale, b = _inputs(M, K, N)
    expected = x.double() @ (w_q.double() * scale.double()[:, None]).t() + b.double()
    _close(q8.linear_q8(x, w_q, scale, b), expected, K)


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_linear_w8a8_at_the_extremes(M, K, N, isa):
    x, w_q, scale, b = _inputs(M, K, N)
    q, s = quantize_rows(x)  # the op's own int8 rows, to the bit
    sums = (q.long() @ w_q.long().t()).double()  # exact
    expected = sums * s.double()[:, None] * scale.double()[None, :] + b.double()
    _close(w8a8.linear_w8a8(x, w_q, scale, b), expected, K)


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_linear_bf16_at_the_extremes(M, K, N, isa):
    x, _, _, b = _inputs(M, K, N)
    w = to_bf16(torch.randn(N, K, generator=torch.Generator().manual_seed(1)))
    # bf16 x bf16 products are exact in float32: only the float32 sums round
    expected = x.to(torch.bfloat16).double() @ w.double().t() + b.double()
    _close(bf16.linear_bf16(x, w, b), expected, K)


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_linear_at_the_extremes(M, K, N, isa):
    x, _, _, b = _inputs(M, K, N)
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(2))
    _close(gemm.linear(x, w, b), x.double() @ w.double().t() + b.double(), K)


@pytest.mark.parametrize("fmt", ["int8", "w8a8"])
def test_the_int8_decode_step_with_minus_128_weights(fmt, isa):
    """decode_step_q8_ reads any int8 weight: a -128 at the start of every row of every
    matrix (and the lm head), against decode_step_reference on the same int8 weights."""
    torch.manual_seed(0)
    config = ModelConfig(n_layer=2, n_head=2, n_embd=64, vocab_size=96, block_size=16)
    model = GPT(config).eval().set_phase(MAX_INT8_CANDIDATES[f"{fmt} fused decode"])
    rt = model.phase
    for w in rt.weights.values():
        w.w_q[:, :2] = -128  # in place: the fused step reads these tensors
    model.prefill(torch.randint(0, config.vocab_size, (1, 5)))
    step = rt.fused_step
    args = list(step.args)  # the reference gets the caches as the step finds them
    args[5], args[6] = [t.clone() for t in args[5]], [t.clone() for t in args[6]]
    token = torch.tensor([[7]])
    with torch.no_grad():
        logits, _ = step(token, 5)
        expected = torch.empty_like(logits)
        decode_step_reference(token, 5, *args, expected, torch.empty(1, 1, dtype=torch.long),
                              *step.int8_args)
    assert_close(logits, expected, rtol=1e-4, atol=1e-4)
