"""Profiler labels for the time-split categories of the study (docs/study.md).

`region(name)` is a `torch.profiler.record_function` while a profiler is recording and a
no-op otherwise: a disabled record_function still costs microseconds, which is a visible
share of a sub-millisecond decode step.
"""
from __future__ import annotations

import contextlib

from torch.autograd import profiler as _autograd_profiler
from torch.profiler import record_function

# The seed's categories; "attention_fused" covers the fused forms (scores+softmax+values),
# "decode_block" a whole block of a fused decode step (the fused_decode switch).
CATEGORIES = ("attention_scores", "attention_values", "softmax", "attention_fused",
              "layernorm", "linear", "kv_cache", "decode_block", "other")

_NO_REGION = contextlib.nullcontext()


def region(name: str):
    if _autograd_profiler._is_profiler_enabled:
        return record_function(name)
    return _NO_REGION
