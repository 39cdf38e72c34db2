"""LayerNorm, linear and embedding in every form the switches select.

Each function takes an optional `out`: without it the form allocates its result and
supports autograd (phase 0, reference, training); with it the form writes into `out`
and takes any scratch from the workspace `ws` (see workspace.py). The tables map a
switch's form to its function; `labelled_*` bind one form to a module's parameters under its
profiler label, once, when a phase is set (runtime.resolve_forms).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import ops
from .labels import region
from .weight_formats import Int4Weight, QuantizedWeight, linear_w4a8_reference, \
    linear_w8a8_reference, round_to_bf16


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


# ---- beyond the seed: int8, int4 and bf16 weights (the `weights` switch) ---------------------
# Each form takes the weight as its format stores it (weight_formats.prepare: made once, when the
# phase is set) and has the naive form right above the fast one: "torch" computes in float32 on
# the operands as the format rounds them (the weight dequantized, for bf16 the activations
# rounded too) with the library's GEMM; "custom" is our kernel on the stored copy.

def linear_int8_torch(x, weight: QuantizedWeight, bias, out=None):
    return linear_torch(x, weight.dequantize().to(x.dtype), bias, out=out)


def linear_int8_custom(x, weight: QuantizedWeight, bias, out=None):
    return ops.linear_q8(x, weight.w_q, weight.scale, bias, out=out)


def linear_w8a8_torch(x, weight: QuantizedWeight, bias, out=None):
    y = linear_w8a8_reference(x, weight.w_q, weight.scale, bias)
    return y if out is None else out.copy_(y)


def linear_w8a8_custom(x, weight: QuantizedWeight, bias, out=None):
    return ops.linear_w8a8(x, weight.w_q, weight.scale, bias, out=out)


def linear_int4_torch(x, weight: Int4Weight, bias, out=None):
    y = linear_w4a8_reference(x, weight, bias)  # the dequantized weight, int8 activations
    return y if out is None else out.copy_(y)


def linear_int4_custom(x, weight: Int4Weight, bias, out=None):
    return ops.linear_q4(x, weight.packed, weight.scales, weight.group_size, bias, out=out)


def linear_bf16_torch(x, weight, bias, out=None):
    return linear_torch(round_to_bf16(x), weight.to(x.dtype), bias, out=out)


def linear_bf16_custom(x, weight, bias, out=None):
    return ops.linear_bf16(x, weight, bias, out=out)


# weights -> matmul -> form(x, the weight as the format stores it, bias, out=None)
LINEAR_BY_WEIGHTS = {
    "fp32": LINEAR,
    "int8": {"torch": linear_int8_torch, "custom": linear_int8_custom},
    "bf16": {"torch": linear_bf16_torch, "custom": linear_bf16_custom},
    "w8a8": {"torch": linear_w8a8_torch, "custom": linear_w8a8_custom},
    "int4": {"torch": linear_int4_torch, "custom": linear_int4_custom},
}


def inference_only(forward, fmt: str):
    """`forward(model, ...)` refused while autograd records: a copy of a weight in another
    format has no gradient to give the fp32 parameter."""
    refusal = (f"weights={fmt!r} is for inference: the {fmt} copy of a weight has no gradient; "
               f"run under torch.no_grad() / torch.inference_mode(), or train with weights='fp32'")

    def guarded(model, *args):
        if torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters()):
            raise RuntimeError(refusal)
        return forward(model, *args)
    return guarded


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


def labelled_linear(form, prepared: "dict | None" = None):
    """The linear the modules call: `form` on each module's weight, or, given `prepared`
    (module -> its weight in the phase's format, made when the phase was set), on that."""
    if prepared is None:
        def linear(x, module, out=None):
            with region("linear"):
                return form(x, module.weight, module.bias, out=out)
    else:
        def linear(x, module, out=None):
            with region("linear"):
                return form(x, prepared[module], module.bias, out=out)
    return linear


def labelled_embedding(form):
    def embedding(idx, weight):
        with region("embedding"):
            return form(idx, weight)
    return embedding
