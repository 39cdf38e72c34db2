"""Custom C++ ops (sources in `smallmind_torch/csrc/`), registered as `torch.ops.smallmind.*`.

Nothing is built at import: the first use of an op (or `load_all()`, which `set_phase` calls
for presets with custom forms, or `build()`) builds the extension (see `_build`) and imports
the Python bindings, one module per C++ file:

- `_gemm` (gemm.cpp): `gemm`, `linear`, the cache of packed weights;
- `_attention` (attention.cpp), `_softmax` (softmax.cpp: `causal_softmax`), `_layer_norm`
  (layer_norm.cpp), `_embedding` (embedding.cpp);
- `_linear_q8`, `_linear_bf16`, `_linear_w8a8`, `_linear_q4` (linear_lowp.cpp): linears on
  int8 / bf16 / int4 weights;
- `_decode` (decode.cpp): `decode_block_`, `decode_step_`, `decode_step_q8_`, `decode_step_q4_`,
  whose parameter
  order is `smallmind_torch/decode_layout.py`'s;
- `_isa` (isa.cpp): the instruction set the kernels run (AVX-512, AVX2 or plain C++; see
  csrc/simd.h).

Every op has a plain-PyTorch reference (`*_reference` beside it; the decode ops' are in
`fused_decode.py`), a `register_fake` (so `torch.compile` traces through it) and, where
training uses it, a `register_autograd`; `_common` holds what the bindings share.
`torch.ops.smallmind_naive.*` (csrc/naive.cpp) are the kernels' naive loops, for the tests.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from ._build import CustomOpsUnavailable, available, build_directory, load, loaded, sources_digest

# public name -> binding module (private names, so that no module shadows its function)
_EXPORTS = {
    "attention": "_attention", "attention_reference": "_attention",
    "causal_softmax": "_softmax", "causal_softmax_": "_softmax",
    "causal_softmax_reference": "_softmax",
    "decode_block_": "_decode",
    "embedding": "_embedding", "embedding_reference": "_embedding",
    "embedding_backward": "_embedding", "embedding_backward_reference": "_embedding",
    "gemm": "_gemm", "gemm_reference": "_gemm", "linear": "_gemm", "linear_reference": "_gemm",
    "kernel_name": "_gemm", "packed_weight_cache": "_gemm",
    "isa": "_isa", "set_isa": "_isa", "supported_isas": "_isa", "use_isa": "_isa",
    "decode_step_": "_decode", "decode_step_q8_": "_decode",
    "layer_norm": "_layer_norm", "layer_norm_reference": "_layer_norm",
    "linear_q8": "_linear_q8", "linear_q8_reference": "_linear_q8",
    "quantize_per_channel": "_linear_q8", "dequantize": "_linear_q8",
    "linear_bf16": "_linear_bf16", "linear_bf16_reference": "_linear_bf16",
    "linear_bf16_kernel": "_linear_bf16", "has_bf16_dot": "_linear_bf16",
    "linear_w8a8": "_linear_w8a8", "linear_w8a8_reference": "_linear_w8a8",
    "linear_w8a8_kernel": "_linear_w8a8",
    "linear_q4": "_linear_q4", "linear_q4_kernel": "_linear_q4",
    "linear_w4a8_reference": "_linear_q4", "decode_step_q4_": "_decode",
}


def _import_binding(module: str):
    load()
    try:
        return importlib.import_module(f"{__name__}.{module}")
    except ImportError as exc:
        raise CustomOpsUnavailable(
            f"the Python bindings of op module {module!r} failed to import: {exc}") from exc


def load_all() -> None:
    """Build the extension and import every binding; raise CustomOpsUnavailable if any fails."""
    for module in sorted(set(_EXPORTS.values())):
        _import_binding(module)


def build(verbose: bool = False) -> Path:
    """Build the ops ahead of use (silent when up to date) and load them; the build directory."""
    load(verbose=verbose)
    load_all()
    return build_directory()


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_import_binding(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


__all__ = ["CustomOpsUnavailable", "available", "build", "build_directory", "load", "load_all", "loaded",
           "sources_digest", *_EXPORTS]
