"""The weight formats of the `weights` switch, in plain PyTorch: how an fp32 weight becomes
int8 or bf16, and the copies the linear forms and the decode step read.

- int8: symmetric, per output channel (`quantize_per_channel`: scale[n] = max |w[n, :]| / 127,
  w_q = round(w / scale) in [-127, 127]); the weight it stands for is scale[:, None] * w_q.
- bf16: each weight rounded to the nearest bfloat16 (8 bits of mantissa); the bf16 forms round
  the activations the same way, so that a product is exact in float32 and only the operands'
  rounding is an error (what a native bf16 dot product, AVX512_BF16's vdpbf16ps, computes).

The copies are made once per version of a weight and held beside the model, keyed by the
weight (`weight_copy`): the state_dict stays fp32, switching back to fp32 gives the exact model,
and an in-place change of a weight (load_state_dict, an optimizer step) makes a new copy at the
next call.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

I8 = torch.int8


def quantize_per_channel(weight: torch.Tensor) -> tuple:
    """(w_q int8 (N, K), scale float32 (N,)) of a float weight (N, K), nn.Linear layout. A row
    of zeros gets scale 1 (its w_q is 0); a non-finite weight is refused."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"quantize_per_channel: weight must be a 2-D floating-point tensor "
                         f"(N, K), got {getattr(weight, 'shape', type(weight).__name__)}")
    w = weight.detach().float()
    if not torch.isfinite(w).all():
        raise ValueError("quantize_per_channel: weight holds NaN or inf; int8 cannot represent it")
    amax = w.abs().amax(dim=1) if w.size(1) else w.new_zeros(w.size(0))  # K = 0: scale 1
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    w_q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(I8)
    return w_q.contiguous(), scale.contiguous()


def dequantize(w_q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float weight an int8 one stands for: scale[:, None] * w_q."""
    return w_q.float() * scale[:, None]


def to_bf16(weight: torch.Tensor) -> torch.Tensor:
    """The weight rounded to bfloat16 (nearest, ties to even), contiguous; a non-finite weight
    is refused (as for int8: a format is for a trained, finite model)."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"to_bf16: weight must be a 2-D floating-point tensor (N, K), got "
                         f"{getattr(weight, 'shape', type(weight).__name__)}")
    if not torch.isfinite(weight).all():
        raise ValueError("to_bf16: weight holds NaN or inf")
    return weight.detach().to(torch.bfloat16).contiguous()


def quantize_rows(x: torch.Tensor) -> tuple:
    """(q int8 (..., K), s float32 (...)): each row of x (the last dim) quantized symmetrically,
    s = max |row| / 127 (1 for a row of zeros), q = round(x / s) (half to even) in [-127, 127];
    a row holding NaN or inf gets s = NaN and q = 0. The activations of the w8a8 form, as the
    linear_w8a8 kernel quantizes them, to the bit."""
    x = x.detach().float()
    amax = x.abs().amax(dim=-1) if x.size(-1) else x.new_zeros(x.shape[:-1])
    finite = torch.isfinite(x).all(dim=-1) if x.size(-1) else torch.ones_like(amax, dtype=torch.bool)
    s = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(x / s[..., None]).clamp_(-127, 127)
    q = torch.where(finite[..., None], q, torch.zeros_like(q)).to(I8)
    return q, torch.where(finite, s, torch.full_like(s, float("nan")))


def linear_w8a8_reference(x, w_q, scale, bias=None):
    """What the w8a8 form computes, in plain PyTorch and x's dtype: the int8 rows of x against
    w_q (exact sums in float32 below 2^24), scaled as the kernels scale, (sum * s_x) * scale."""
    q, s = quantize_rows(x)
    y = F.linear(q.to(x.dtype), w_q.to(x.dtype)) * s.to(x.dtype)[..., None] * scale.to(x.dtype)
    return y if bias is None else y + bias


def round_to_bf16(x: torch.Tensor) -> torch.Tensor:
    """x rounded to bfloat16 and back to its dtype: an operand as a bf16 dot product reads it."""
    return x.to(torch.bfloat16).to(x.dtype)


_MAKE = {"int8": quantize_per_channel, "bf16": to_bf16}
# (weight, format) -> (its version when made, the copy); dropped with the weight
_COPIES = {fmt: WeakIdKeyDictionary() for fmt in _MAKE}


def weight_copy(weight: torch.Tensor, fmt: str):
    """The `fmt` copy of a float weight: (w_q, scale) for "int8", the bf16 tensor for "bf16";
    made once per version of the weight."""
    copies = _COPIES[fmt]
    cached = copies.get(weight)
    if cached is None or cached[0] != weight._version:
        with torch.no_grad():
            cached = copies[weight] = (weight._version, _MAKE[fmt](weight))
    return cached[1]


def quantized_weight(weight: torch.Tensor) -> tuple:
    """(w_q, scale): the int8 copy of a float weight."""
    return weight_copy(weight, "int8")


def bf16_weight(weight: torch.Tensor) -> torch.Tensor:
    """The bf16 copy of a float weight."""
    return weight_copy(weight, "bf16")
