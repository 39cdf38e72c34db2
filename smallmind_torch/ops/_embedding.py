"""Bindings of csrc/embedding.cpp: `embedding` with the sorted, segment-reduced backward."""
from __future__ import annotations

import torch
from torch import Tensor

from ._build import load
from ._common import CALL_ERRORS, I64, check_int, diagnose, fake_check, fake_tensor

load()  # build / load the C++ extension (cached); raises CustomOpsUnavailable

_embedding = torch.ops.smallmind.embedding.default
_embedding_inference = torch.ops.smallmind.embedding_inference.default
_embedding_backward = torch.ops.smallmind.embedding_backward.default

__all__ = ["embedding", "embedding_reference", "embedding_backward",
           "embedding_backward_reference"]


def embedding_reference(idx: Tensor, weight: Tensor) -> Tensor:
    """Plain PyTorch: weight[idx]."""
    return weight[idx]


def embedding_backward_reference(grad_output: Tensor, idx: Tensor, num_weights: int) -> Tensor:
    """Plain PyTorch sorted segment reduce: stable sort of the ids, then the rows of each run
    summed in position order (index_add_ over the sorted ids adds run by run)."""
    d = grad_output.shape[-1]
    ids = idx.reshape(-1)
    sorted_ids, order = torch.sort(ids, stable=True)
    grad = grad_output.reshape(-1, d)[order]
    out = torch.zeros(num_weights, d, dtype=grad_output.dtype, device=grad_output.device)
    return out.index_add_(0, sorted_ids, grad)


def embedding(idx: Tensor, weight: Tensor) -> Tensor:
    """weight[idx]: idx int64 of any shape, weight (V, D) float32 -> (*idx.shape, D)."""
    try:
        if torch.is_grad_enabled() and weight.requires_grad:
            return _embedding(idx, weight)
        return _embedding_inference(idx, weight)
    except CALL_ERRORS as exc:
        diagnose("embedding", exc, longs=(("indices", idx),), tensors=(("weight", weight),))
        raise


def embedding_backward(grad_output: Tensor, idx: Tensor, num_weights: int) -> Tensor:
    """grad_weight (num_weights, D) of embedding for grad_output (*idx.shape, D)."""
    if type(num_weights) is not int:
        check_int("embedding_backward", "num_weights", num_weights)
    try:
        return _embedding_backward(grad_output, idx, num_weights)
    except CALL_ERRORS as exc:
        diagnose("embedding_backward", exc, tensors=(("grad_output", grad_output),),
                 longs=(("indices", idx),))
        raise


# ---- fakes: the results' shapes, refusing what embedding.cpp refuses (ids are data: C++ only) ----

@torch.library.register_fake("smallmind::embedding")
def _embedding_fake(indices, weight):
    fake_tensor("embedding", "indices", indices, I64)
    fake_tensor("embedding", "weight", weight, dim=2)
    return weight.new_empty((*indices.shape, weight.shape[1]))


@torch.library.register_fake("smallmind::embedding_inference")
def _embedding_inference_fake(indices, weight):
    return _embedding_fake(indices, weight)


@torch.library.register_fake("smallmind::embedding_backward")
def _embedding_backward_fake(grad_output, indices, num_weights):
    op = "embedding_backward"
    fake_tensor(op, "grad_output", grad_output, min_dim=1)
    fake_tensor(op, "indices", indices, I64)
    fake_check(op, "num_weights", num_weights >= 0, value=True)
    fake_check(op, "'grad_output'", grad_output.shape[:-1] == indices.shape)
    return grad_output.new_empty((num_weights, grad_output.shape[-1]))


# ---- autograd ----

def _embedding_setup_context(ctx, inputs, output):
    indices, weight = inputs
    ctx.save_for_backward(indices)
    ctx.num_weights = weight.shape[0]


def _embedding_backward_formula(ctx, grad):
    (indices,) = ctx.saved_tensors
    grad_weight = None
    if ctx.needs_input_grad[1]:
        grad_weight = _embedding_backward(grad.contiguous(), indices, ctx.num_weights)
    return None, grad_weight


torch.library.register_autograd("smallmind::embedding", _embedding_backward_formula,
                                setup_context=_embedding_setup_context)
