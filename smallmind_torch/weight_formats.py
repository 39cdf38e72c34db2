"""The weight formats of the `weights` switch, in plain PyTorch: how an fp32 weight becomes
int8, int4 or bf16, and the weight each format's linear form reads.

- int8 (and w8a8, which reads the same int8 weights): symmetric, per output channel
  (`quantize_per_channel`: scale[n] = max |w[n, :]| / 127, w_q = round(w / scale) in
  [-127, 127]); the weight it stands for is scale[:, None] * w_q. A `QuantizedWeight` holds both.
- int4 (`quantize_int4`): symmetric, per output channel and group of `group_size` (32 by
  default) consecutive inputs: scale[n, g] = max |w[n, group g]| / 7, q = round(w / scale) in
  [-7, 7], stored two per byte as q + 8 (ggml q4_0's layout inside each block of 32: byte i
  holds element i in its low nibble, element i + 16 in its high one). An `Int4Weight` holds
  the packed bytes and the scales; its linear form quantizes the activations per row to int8
  as w8a8 does (linear_w4a8_reference).
- bf16: each weight rounded to the nearest bfloat16 (8 bits of mantissa); the bf16 forms round
  the activations the same way, so that a product is exact in float32 and only the operands'
  rounding is an error (what a native bf16 dot product, AVX512_BF16's vdpbf16ps, computes).

`prepare(weight, fmt)` makes a weight's copy in a format. A phase makes the copies it needs once,
when it is set (runtime.PhaseRuntime), and keeps them beside the model: the state_dict stays
fp32, and switching back to fp32 gives the exact model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

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


@dataclass(frozen=True)
class QuantizedWeight:
    """An int8 weight and the float32 scale of each of its rows (quantize_per_channel)."""

    w_q: torch.Tensor    # (N, K) int8
    scale: torch.Tensor  # (N,) float32

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.w_q, self.scale)


def quantize_weight(weight: torch.Tensor) -> QuantizedWeight:
    return QuantizedWeight(*quantize_per_channel(weight))


# ---- int4: group-wise symmetric, two weights per byte ----------------------------------------

INT4_BLOCK = 32  # the packing's unit (ggml's q4_0 block); a group is a whole number of blocks
INT4_GROUP = 32  # the default group size


def check_int4_group(group_size, k: int, what: str = "quantize_int4") -> None:
    """A clear ValueError unless `group_size` is a positive multiple of 32 that divides K."""
    if (not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1
            or group_size % INT4_BLOCK):
        raise ValueError(f"{what}: group_size must be a positive multiple of {INT4_BLOCK} "
                         f"(32, 64, 96, ...), got {group_size!r}")
    if k < 1 or k % group_size:
        raise ValueError(f"{what}: the group size {group_size} must divide the weight's K "
                         f"(its input features), got K = {k}; int4 needs K a multiple of a "
                         f"group size that is a multiple of {INT4_BLOCK}")


class FormatUnavailable(ValueError):
    """A model whose matrices a weight format cannot hold (int4: a width not a multiple of its
    group size)."""


def format_problem(fmt: str, config) -> "str | None":
    """Why a model of shape `config` (a ModelConfig) cannot hold its matrices in the format
    `fmt` (None: it can). Every matrix's K is n_embd or 4 n_embd."""
    if fmt == "int4" and config.n_embd % INT4_GROUP:
        return (f"int4 weights need n_embd a multiple of their group size {INT4_GROUP} (every "
                f"matrix's K is n_embd or 4 n_embd); this model has n_embd = {config.n_embd}")
    return None


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q int (N, K) in [-7, 7], K a multiple of 32 -> uint8 (N, K / 2): q + 8 two per byte, in
    each block of 32 byte i = element i (low nibble) | element i + 16 (high nibble)."""
    n, k = q.shape
    u = (q.to(torch.int16) + 8).view(n, k // INT4_BLOCK, 2, INT4_BLOCK // 2)
    return (u[:, :, 0] | (u[:, :, 1] << 4)).to(torch.uint8).reshape(n, k // 2).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """pack_int4 undone: int8 (N, K) in [-8, 7] of uint8 (N, K / 2)."""
    n, half = packed.shape
    p = packed.view(n, half * 2 // INT4_BLOCK, INT4_BLOCK // 2).to(torch.int16)
    return (torch.cat([p & 0xF, p >> 4], dim=-1) - 8).to(I8).reshape(n, half * 2)


@dataclass(frozen=True)
class Int4Weight:
    """An int4 weight (quantize_int4): packed uint8 (N, K / 2), scales float32 (N, K / G)."""

    packed: torch.Tensor
    scales: torch.Tensor
    group_size: int = INT4_GROUP

    def dequantize(self) -> torch.Tensor:
        """The float weight it stands for: scale[n, g] * q[n, k] for k in group g."""
        q = unpack_int4(self.packed).float()
        n, k = q.shape
        return (q.view(n, k // self.group_size, self.group_size)
                * self.scales[:, :, None]).view(n, k)


def quantize_int4(weight: torch.Tensor, group_size: int = INT4_GROUP) -> Int4Weight:
    """The Int4Weight of a float weight (N, K), nn.Linear layout: per (row n, group g of
    `group_size` inputs) scale = max |w| / 7 (1 for a group of zeros), q = round(w / scale)
    (half to even) in [-7, 7]. group_size: a multiple of 32 that divides K."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"quantize_int4: weight must be a 2-D floating-point tensor (N, K), "
                         f"got {getattr(weight, 'shape', type(weight).__name__)}")
    check_int4_group(group_size, weight.size(1))
    w = weight.detach().float()
    if not torch.isfinite(w).all():
        raise ValueError("quantize_int4: weight holds NaN or inf; int4 cannot represent it")
    n, k = w.shape
    groups = w.view(n, k // group_size, group_size)
    amax = groups.abs().amax(dim=-1)
    scales = torch.where(amax > 0, amax / 7.0, torch.ones_like(amax))
    q = torch.round(groups / scales[:, :, None]).clamp_(-7, 7).view(n, k)
    return Int4Weight(pack_int4(q), scales.contiguous(), group_size)


def linear_w4a8_reference(x, weight: Int4Weight, bias=None):
    """What the int4 form (the linear_q4 op) computes, in plain PyTorch and x's dtype: the rows
    of x quantized to int8 (quantize_rows, as w8a8's) against the dequantized int4 weight,
    y = (q_x @ W^T) * s_x + bias, W[n, k] = scale[n, g] * q[n, k]. The kernels sum each group
    exactly in int32 and then scale it; here the float GEMM rounds a little differently."""
    q, s = quantize_rows(x)
    y = F.linear(q.to(x.dtype), weight.dequantize().to(x.dtype)) * s.to(x.dtype)[..., None]
    return y if bias is None else y + bias


# format -> how a float weight is stored in it; int8 and w8a8 read the same int8 weights
_PREPARE = {"int8": quantize_weight, "w8a8": quantize_weight, "bf16": to_bf16,
            "int4": quantize_int4}


def prepare(weight: torch.Tensor, fmt: str):
    """The weight as the format `fmt` stores it: the weight itself for "fp32", a
    QuantizedWeight for "int8" and "w8a8", an Int4Weight (groups of 32) for "int4", the bf16
    tensor for "bf16"."""
    if fmt == "fp32":
        return weight
    # made outside inference mode even inside it, as the workspace's buffers (workspace.py)
    with torch.inference_mode(False), torch.no_grad():
        return _PREPARE[fmt](weight)


# ---- the bytes a decode step reads ----------------------------------------------------------

def weight_bytes_per_decode(model) -> int:
    """Bytes of parameters one decode step reads: every weight once (the tied wte/lm_head
    once, as the lm head), plus one row each of wte and wpe."""
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if name.endswith("wpe.weight"):
            total += p[0].numel() * p.element_size()
        else:
            total += p.numel() * p.element_size()
    wte = model.transformer.wte.weight
    return total + wte[0].numel() * wte.element_size()


BYTES_PER_WEIGHT = {"fp32": 4, "int8": 1, "w8a8": 1, "bf16": 2, "int4": 0.5}
INT8_FORMATS = ("int8", "w8a8")  # the formats on int8 weights (w8a8: int8 activations too)


def scale_bytes(fmt: str, rows: int, cols: int) -> int:
    """Bytes of the float32 scales of a (rows, cols) matrix in `fmt`: int8 and w8a8 one per row,
    int4 one per group of INT4_GROUP inputs, the others none."""
    if fmt in INT8_FORMATS:
        return rows * 4
    if fmt == "int4":
        return rows * (cols // INT4_GROUP) * 4
    return 0


def decode_weight_bytes(model, weights: "str | None" = None) -> int:
    """weight_bytes_per_decode in the format `weights` (default: the model's phase's): the
    matrices of the linear layers and the lm head at their format's width (int8, w8a8: plus a
    float32 scale per row; int4: half a byte, plus a float32 scale per group of 32), the rest (LayerNorms, biases, the position row, the token row) in
    float32."""
    fmt = weights or model.phase.opt.weights
    total = weight_bytes_per_decode(model)
    if fmt == "fp32":
        return total
    matrices = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for w in {id(w): w for w in matrices}.values():  # the tied lm head once
        rows, cols = w.shape
        total -= w.numel() * 4
        total += int(rows * cols * BYTES_PER_WEIGHT[fmt]) + scale_bytes(fmt, rows, cols)
    return total
