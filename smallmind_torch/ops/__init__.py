"""Custom C++ ops (sources in `ops/`), registered as `torch.ops.smallmind.*`.

Importing this package builds the extension on first use (see `_build`), then defines the
Python wrappers: each op has a pure-PyTorch reference beside its binding, a `register_fake`
(so `torch.compile` traces through it) and, where training uses it, a `register_autograd`.
"""
from ._build import CustomOpsUnavailable, available, load

load()

from .attention import attention, attention_reference  # noqa: E402
from .embedding import embedding, embedding_backward, embedding_backward_reference  # noqa: E402
from .gemm import gemm, gemm_reference, linear, linear_reference  # noqa: E402
from .layer_norm import layer_norm, layer_norm_reference  # noqa: E402
from .softmax import causal_softmax, causal_softmax_, causal_softmax_reference  # noqa: E402

__all__ = [
    "CustomOpsUnavailable", "available", "load",
    "attention", "attention_reference",
    "embedding", "embedding_backward", "embedding_backward_reference",
    "gemm", "gemm_reference", "linear", "linear_reference",
    "layer_norm", "layer_norm_reference",
    "causal_softmax", "causal_softmax_", "causal_softmax_reference",
]
