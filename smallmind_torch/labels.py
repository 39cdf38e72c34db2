"""Profiler labels for the time-split categories of the study (docs/study.md).

`region(name)` is a `torch.profiler.record_function` while a profiler is recording and a
no-op otherwise: a disabled record_function still costs microseconds, which is a visible
share of a sub-millisecond decode step.
"""
from __future__ import annotations

import contextlib

import torch
from torch.autograd import profiler as _autograd_profiler
from torch.profiler import record_function

# The seed's categories; "attention_fused" covers the fused forms (scores+softmax+values),
# "decode_step" a whole fused decode step (the fused_decode switch: one C++ call per token).
CATEGORIES = ("embedding", "attention_scores", "attention_values", "softmax", "attention_fused",
              "layernorm", "linear", "kv_cache", "decode_step", "other")

# A training step adds the backward of each forward label (the profiler links a backward node
# to its forward op by sequence number, and the forward op lies inside a label), the loss and
# the optimizer step.
BACKWARD_OF = {"embedding": "embedding_backward", "layernorm": "layernorm_backward",
               "linear": "linear_backward", "attention_scores": "attention_backward",
               "attention_values": "attention_backward", "softmax": "attention_backward",
               "attention_fused": "attention_backward"}
TRAINING_CATEGORIES = (*CATEGORIES[:-1], "loss", "embedding_backward", "layernorm_backward",
                       "attention_backward", "linear_backward", "other_backward", "optimizer",
                       "other")

_NO_REGION = contextlib.nullcontext()


@torch.compiler.assume_constant_result
def _profiling() -> bool:
    # Read as a constant when torch.compile traces (no guard on it): a profiled run of
    # compiled code must not recompile it; labels inside compiled graphs record nothing.
    return _autograd_profiler._is_profiler_enabled


def region(name: str):
    if _profiling():
        return record_function(name)
    return _NO_REGION
