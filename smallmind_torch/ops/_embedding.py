"""`embedding` with the sorted / segment-reduced backward custom op (`ops/embedding.cpp`).

    embedding(idx, weight)                            weight[idx], idx int64 of any shape
    embedding_backward(grad_output, idx, num_weights) grad_weight (num_weights, D)

The backward groups positions by token id with a stable sort and sums each run of equal
ids into its row (one writer per row): deterministic, no atomics. It matches autograd's
`torch.zeros(V, D).index_add_(0, idx.flatten(), grad.reshape(-1, D))` path.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._build import load

load()

_ops = torch.ops.smallmind

__all__ = ["embedding", "embedding_reference", "embedding_backward",
           "embedding_backward_reference"]


def embedding_reference(idx: Tensor, weight: Tensor) -> Tensor:
    return weight[idx]


def embedding_backward_reference(grad_output: Tensor, idx: Tensor, num_weights: int) -> Tensor:
    """Pure-PyTorch sorted segment reduce: stable sort of the ids, then the rows of each
    run summed in position order (index_add_ over the sorted ids adds run by run)."""
    d = grad_output.shape[-1]
    ids = idx.reshape(-1)
    sorted_ids, order = torch.sort(ids, stable=True)
    grad = grad_output.reshape(-1, d)[order]
    out = torch.zeros(num_weights, d, dtype=grad_output.dtype, device=grad_output.device)
    return out.index_add_(0, sorted_ids, grad)


_BelowAutograd = getattr(torch._C, "_AutoDispatchBelowAutograd", None)


def embedding(idx: Tensor, weight: Tensor) -> Tensor:
    """weight[idx] (idx: int64, any shape; weight (V, D) float32) -> (*idx.shape, D)."""
    if (_BelowAutograd is not None and not (torch.is_grad_enabled() and weight.requires_grad)
            and not torch.compiler.is_compiling()):
        # nothing to differentiate: skip the Python autograd kernel (~15 us a call)
        with _BelowAutograd():
            return _ops.embedding.default(idx, weight)
    return _ops.embedding.default(idx, weight)


def embedding_backward(grad_output: Tensor, idx: Tensor, num_weights: int) -> Tensor:
    """grad_weight (num_weights, D) of embedding for grad_output (*idx.shape, D)."""
    return _ops.embedding_backward.default(grad_output, idx, num_weights)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise RuntimeError(msg)


@torch.library.register_fake("smallmind::embedding")
def _embedding_fake(indices, weight):
    _check(indices.dtype == torch.int64,
           f"smallmind::embedding: 'indices' must have dtype Long, got {indices.dtype}")
    _check(weight.dtype == torch.float32,
           f"smallmind::embedding: 'weight' must have dtype Float, got {weight.dtype}")
    _check(weight.dim() == 2, f"smallmind::embedding: 'weight' must be 2-D, got shape "
                              f"{tuple(weight.shape)}")
    return weight.new_empty((*indices.shape, weight.shape[1]))


@torch.library.register_fake("smallmind::embedding_backward")
def _embedding_backward_fake(grad_output, indices, num_weights):
    _check(grad_output.dtype == torch.float32,
           f"smallmind::embedding_backward: 'grad_output' must have dtype Float, got "
           f"{grad_output.dtype}")
    _check(indices.dtype == torch.int64,
           f"smallmind::embedding_backward: 'indices' must have dtype Long, got {indices.dtype}")
    _check(grad_output.dim() == indices.dim() + 1,
           "smallmind::embedding_backward: 'grad_output' must have shape (*indices.shape, D)")
    return grad_output.new_empty((num_weights, grad_output.shape[-1]))


def _embedding_setup_context(ctx, inputs, output):
    indices, weight = inputs
    ctx.save_for_backward(indices)
    ctx.num_weights = weight.shape[0]


def _embedding_backward_formula(ctx, grad):
    (indices,) = ctx.saved_tensors
    grad_weight = None
    if ctx.needs_input_grad[1]:
        grad_weight = _ops.embedding_backward.default(grad.contiguous(), indices,
                                                      ctx.num_weights)
    return None, grad_weight


torch.library.register_autograd("smallmind::embedding", _embedding_backward_formula,
                                setup_context=_embedding_setup_context)
