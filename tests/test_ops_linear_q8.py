"""Weight-only int8 linear (csrc/linear_lowp.cpp): what it has of its own, the quantization of
its weights and NaN; the rest, with the other linear ops, in test_ops_linear_lowp.py."""
import pytest
import torch

from helpers import ops_binding_or_skip

_binding = ops_binding_or_skip("_linear_q8")
linear_q8 = _binding.linear_q8
quantize_per_channel, dequantize = _binding.quantize_per_channel, _binding.dequantize

from ops_isa import isa  # noqa: E402,F401 (a fixture)


def test_quantization_error_is_the_weights_rounding():
    w = torch.randn(64, 256)
    w_q, scale = quantize_per_channel(w)
    assert w_q.dtype == torch.int8 and int(w_q.abs().max()) == 127
    # each weight within half a step of its row
    assert ((dequantize(w_q, scale) - w).abs() <= scale[:, None] / 2 + 1e-7).all()
    zero_q, zero_scale = quantize_per_channel(torch.zeros(2, 3))
    assert not zero_q.any() and torch.equal(zero_scale, torch.ones(2))
    empty_q, empty_scale = quantize_per_channel(torch.zeros(2, 0))  # K = 0
    assert empty_q.shape == (2, 0) and torch.equal(empty_scale, torch.ones(2))


@pytest.mark.parametrize("bad", [torch.zeros(3), torch.zeros(2, 3, dtype=torch.int8),
                                 torch.tensor([[1.0, float("nan")]])])
def test_quantize_refuses_what_int8_cannot_hold(bad):
    with pytest.raises(ValueError, match="quantize_per_channel"):
        quantize_per_channel(bad)


def test_nan_propagates(isa):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 40, generator=g)
    w_q, scale = quantize_per_channel(torch.randn(6, 40, generator=g))
    x[1, 33] = float("nan")  # in the tail of a 16-wide vector loop, and in a vector lane
    x[0, 3] = float("nan")
    assert torch.isnan(linear_q8(x, w_q, scale, torch.randn(6, generator=g))).all()


@pytest.mark.parametrize("changes, match, meta_match", [
    (dict(scale=torch.ones(8)), "'scale' must have shape", "invalid 'scale'"),
    # a meta tensor's dtype: the wrapper names it, as the kernel does on the CPU
    (dict(scale=torch.ones(9, dtype=torch.float64)), "'scale' must have dtype Float",
     "'scale' must have dtype Float"),
])
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_bad_scale(changes, match, meta_match, device):
    match = match if device == "cpu" else meta_match
    g = torch.Generator().manual_seed(0)
    w_q, scale = quantize_per_channel(torch.randn(9, 20, generator=g))
    args = {**dict(x=torch.randn(3, 20, generator=g), w_q=w_q, scale=scale, bias=None), **changes}
    with pytest.raises((RuntimeError, ValueError), match=match):
        linear_q8(**{k: v.to(device) if v is not None else v for k, v in args.items()})
