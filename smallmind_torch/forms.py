"""LayerNorm, linear and embedding in every form the switches select.

Each function takes an optional `out`: without it the form allocates its result and
supports autograd (phase 0, reference, training); with it the form writes into `out`
and takes any scratch from the workspace `ws` (see workspace.py). The tables map a
switch's form to its function; `labelled_*` bind one form to a module's parameters under its
profiler label, once, when a phase is set (model.resolve_forms).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import ops
from .labels import region
from .weight_formats import (bf16_weight, dequantize, linear_w8a8_reference, quantized_weight,
                             round_to_bf16)


# ---- bottleneck 6: LayerNorm ----------------------------------------------------------------

def layer_norm_naive(x, weight, bias, eps, out=None, ws=None):
    """The seed's baseline: composed from mean and variance ops."""
    if out is None:
        mean = x.mean(dim=-1, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + eps) * weight + bias
    # The same steps into buffers. Python numbers in in-place ops would each be wrapped in
    # a fresh tensor, hence ws.scalar; torch.var/mean with out= allocate internally.
    stats = x.shape[:-1] + (1,)
    width = ws.scalar(float(x.size(-1)))
    mean = torch.sum(x, dim=-1, keepdim=True, out=ws.take("layernorm.mean", *stats)).div_(width)
    centered = torch.sub(x, mean, out=out)
    squares = torch.mul(centered, centered, out=ws.take("layernorm.squares", *x.shape))
    var = torch.sum(squares, dim=-1, keepdim=True, out=ws.take("layernorm.rstd", *stats)).div_(width)
    rstd = var.add_(ws.scalar(eps)).rsqrt_()
    return centered.mul_(rstd).mul_(weight).add_(bias)


def layer_norm_torch(x, weight, bias, eps, out=None, ws=None):
    if out is None:
        return F.layer_norm(x, (x.size(-1),), weight, bias, eps)
    stats = x.shape[:-1] + (1,)
    torch.ops.aten.native_layer_norm.out(
        x, [x.size(-1)], weight, bias, eps, out0=out,
        out1=ws.take("layernorm.mean", *stats), out2=ws.take("layernorm.rstd", *stats))
    return out


def layer_norm_custom(x, weight, bias, eps, out=None, ws=None):
    return ops.layer_norm(x, weight, bias, eps, out=out)


LAYER_NORM = {"naive": layer_norm_naive, "torch": layer_norm_torch, "custom": layer_norm_custom}


# ---- bottleneck 5: the matmuls of every linear layer -----------------------------------------

def linear_torch(x, weight, bias, out=None):
    if out is None:
        return F.linear(x, weight, bias)
    x2d = x.reshape(-1, x.size(-1))  # (B*T, in); a view for the workspace's buffers
    out2d = out.view(-1, weight.size(0))  # (B*T, out)
    if bias is None:
        return torch.mm(x2d, weight.t(), out=out2d).view(out.shape)
    return torch.addmm(bias, x2d, weight.t(), out=out2d).view(out.shape)


def linear_custom(x, weight, bias, out=None):
    return ops.linear(x, weight, bias, out=out)


LINEAR = {"torch": linear_torch, "custom": linear_custom}


# ---- beyond the seed: int8 and bf16 weights (the `weights` switch) ---------------------------
# Each format has the naive form right above the fast one: "torch" computes in float32 on the
# operands as the format rounds them (the weight dequantized, for bf16 the activations rounded
# too) with the library's GEMM; "custom" is our kernel on the stored copy.

def _inference_only(weight, fmt):
    if torch.is_grad_enabled() and weight.requires_grad:
        raise RuntimeError(f"weights={fmt!r} is for inference: the {fmt} copy of a weight has no "
                           f"gradient; run under torch.no_grad() / torch.inference_mode(), or "
                           f"train with weights='fp32'")


def linear_int8_torch(x, weight, bias, out=None):
    _inference_only(weight, "int8")
    return linear_torch(x, dequantize(*quantized_weight(weight)).to(weight.dtype), bias, out=out)


def _int8_custom(fmt: str, op: str):
    """Our kernel `op` (linear_q8, linear_w8a8) on the int8 copy of the weight."""
    def linear(x, weight, bias, out=None):
        _inference_only(weight, fmt)
        w_q, scale = quantized_weight(weight)
        return getattr(ops, op)(x, w_q, scale, bias, out=out)
    return linear


linear_int8_custom = _int8_custom("int8", "linear_q8")


def linear_w8a8_torch(x, weight, bias, out=None):
    _inference_only(weight, "w8a8")
    y = linear_w8a8_reference(x, *quantized_weight(weight), bias)
    return y if out is None else out.copy_(y)


linear_w8a8_custom = _int8_custom("w8a8", "linear_w8a8")


def linear_bf16_torch(x, weight, bias, out=None):
    _inference_only(weight, "bf16")
    return linear_torch(round_to_bf16(x), bf16_weight(weight).to(weight.dtype), bias, out=out)


def linear_bf16_custom(x, weight, bias, out=None):
    _inference_only(weight, "bf16")
    return ops.linear_bf16(x, bf16_weight(weight), bias, out=out)


# weights -> matmul -> form
LINEAR_BY_WEIGHTS = {
    "fp32": LINEAR,
    "int8": {"torch": linear_int8_torch, "custom": linear_int8_custom},
    "bf16": {"torch": linear_bf16_torch, "custom": linear_bf16_custom},
    "w8a8": {"torch": linear_w8a8_torch, "custom": linear_w8a8_custom},
}


# ---- bottleneck 7: token embedding (its backward matters in training) ------------------------

def embedding_torch(idx, weight):
    return F.embedding(idx, weight)  # backward: autograd's index_add


def embedding_custom(idx, weight):
    return ops.embedding(idx, weight)  # backward: sorted, segment-reduced op


EMBEDDING = {"torch": embedding_torch, "custom": embedding_custom}


# ---- one form bound under its profiler label: what the model calls --------------------------

def labelled_layer_norm(form):
    def layer_norm(x, module, out=None, ws=None):
        with region("layernorm"):
            return form(x, module.weight, module.bias, module.eps, out=out, ws=ws)
    return layer_norm


def labelled_linear(form):
    def linear(x, module, out=None):
        with region("linear"):
            return form(x, module.weight, module.bias, out=out)
    return linear


def labelled_embedding(form):
    def embedding(idx, weight):
        with region("embedding"):
            return form(idx, weight)
    return embedding
