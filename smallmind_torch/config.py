"""Model shape and optimization switches, both frozen dataclasses.

`ModelConfig` is the GPT-2 shape (seed shape by default). `OptConfig` has one field per
row of STUDY.md's bottleneck table; each field names the *form* that row runs in.
`PHASES` holds the named presets: they are data, not code paths.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int = 4
    n_head: int = 8
    n_embd: int = 256
    vocab_size: int = 512
    block_size: int = 128
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self):
        for name in ("n_layer", "n_head", "n_embd", "vocab_size", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"ModelConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"n_head values allowed for n_embd={self.n_embd}: "
                f"{[h for h in range(1, self.n_embd + 1) if self.n_embd % h == 0]}"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# Allowed forms per switch. The first entry of each tuple is the naive (phase 0) form.
FORMS: dict[str, tuple] = {
    # 1: "naive" = one dot product per (query i, key j <= i); "batched" = one Q @ K^T
    "attention_scores": ("naive", "batched"),
    # 2: "naive" = one sum per (row i, dim d) over j; "batched" = one att @ V
    "attention_values": ("naive", "batched"),
    # beyond the seed: replaces 1, 2 and the attention softmax with one fused kernel
    "fused_attention": ("off", "sdpa", "custom"),
    # 3a: intermediates of an inference forward live in buffers allocated once
    "workspace": (False, True),
    # 3b: static KV cache, prefill once then one token per step
    "kv_cache": (False, True),
    # beyond the seed: a decode step runs each block as one C++ op (LN, qkv, cache write,
    # attention, projections, MLP) instead of ~35 small op calls; needs kv_cache + workspace
    "fused_decode": (False, True),
    # 4: "naive" = three passes (max, exp+sum, scale); "torch" = F.softmax; "custom" = our op
    "softmax": ("naive", "torch", "custom"),
    # 5: "torch" = library GEMM; "custom" = our blocked GEMM op
    "matmul": ("torch", "custom"),
    # 6: "naive" = composed from mean/var; "torch" = F.layer_norm; "custom" = our op
    "layernorm": ("naive", "torch", "custom"),
    # 7: "torch" = autograd's index_add; "custom" = sorted, segment-reduced backward op
    "embedding_backward": ("torch", "custom"),
    # 8: "default" = per-module init; "fast" = one vectorized pass over all parameters
    "init": ("default", "fast"),
}

# Forms that only make sense on top of others: (switch, form) -> the switches it needs.
REQUIRES = {
    ("fused_decode", True): {"kv_cache": True, "workspace": True},
}

# Forms that need the C++ extension from ops/.
CUSTOM_OP_FORMS = {
    "fused_attention": "custom", "softmax": "custom", "matmul": "custom",
    "layernorm": "custom", "embedding_backward": "custom", "fused_decode": True,
}


@dataclass(frozen=True)
class OptConfig:
    """One field per optimization switch; defaults are the `reference` preset."""

    attention_scores: str = "batched"
    attention_values: str = "batched"
    fused_attention: str = "off"
    workspace: bool = False
    kv_cache: bool = False
    fused_decode: bool = False
    softmax: str = "torch"
    matmul: str = "torch"
    layernorm: str = "torch"
    embedding_backward: str = "torch"
    init: str = "default"

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            allowed = FORMS[f.name]
            if value not in allowed or type(value) is not type(allowed[0]):
                raise ValueError(
                    f"OptConfig.{f.name}={value!r} is not a known form; allowed: {list(allowed)}"
                )
        for (name, form), needs in REQUIRES.items():
            missing = {k: v for k, v in needs.items() if getattr(self, name) == form
                       and getattr(self, k) != v}
            if missing:
                raise ValueError(
                    f"OptConfig.{name}={form!r} needs "
                    + ", ".join(f"{k}={v!r}" for k, v in needs.items())
                    + f"; got {', '.join(f'{k}={getattr(self, k)!r}' for k in missing)}")

    def replace(self, **changes) -> "OptConfig":
        unknown = set(changes) - set(FORMS)
        if unknown:
            raise ValueError(f"unknown OptConfig switch(es) {sorted(unknown)}; known: {list(FORMS)}")
        return replace(self, **changes)

    @property
    def needs_custom_ops(self) -> bool:
        return any(getattr(self, name) == form for name, form in CUSTOM_OP_FORMS.items())


_REFERENCE = OptConfig()
_PHASE0 = OptConfig(**{name: forms[0] for name, forms in FORMS.items()})
_PHASE1 = _PHASE0.replace(attention_scores="batched", attention_values="batched", workspace=True)
_PHASE2 = _PHASE1.replace(kv_cache=True, softmax="custom", matmul="custom")
_PHASE3 = _PHASE2.replace(layernorm="custom", embedding_backward="custom", init="fast")

PHASES: dict[str, OptConfig] = {
    "reference": _REFERENCE,  # plain PyTorch: F.softmax, F.layer_norm, masked matmul attention
    "phase0": _PHASE0,        # the seed's baseline algorithms, literally
    "phase1": _PHASE1,        # + batched attention (1, 2) + preallocated workspace (3a)
    "phase2": _PHASE2,        # + static KV cache (3b), fused causal softmax (4), custom GEMM (5)
    "phase3": _PHASE3,        # + fused LayerNorm (6), embedding backward (7), fast init (8)
}

# "max" is the fastest correct combination measured on each device, fastest first; a model
# takes the first one its device can run (the custom ops have CPU kernels only, and may
# fail to build). On CPU (2 cores here) our fused attention + GEMM + LayerNorm decode beat
# ATen's SDPA + GEMM by ~1.2-1.3x per decode step (experiments/max_fastest.py measures it).
# One C++ op per block during decode (fused_decode) then cuts the step from ~2.1 to ~0.9 ms
# on the seed shape (2 threads; ~3.2 -> ~1.9 ms on 1 thread): it removes ~140 op dispatches.
_SDPA_KV = _REFERENCE.replace(fused_attention="sdpa", workspace=True, kv_cache=True)
_MAX_CUSTOM = _PHASE3.replace(fused_attention="custom")
MAX_BY_DEVICE: dict[str, tuple] = {
    "cpu": (_MAX_CUSTOM.replace(fused_decode=True), _MAX_CUSTOM, _SDPA_KV),
    "cuda": (_SDPA_KV,),
}
PHASES["max"] = MAX_BY_DEVICE["cpu"][0]


def resolve_phase(phase: "str | OptConfig") -> OptConfig:
    if isinstance(phase, OptConfig):
        return phase
    if isinstance(phase, str) and phase in PHASES:
        return PHASES[phase]
    raise ValueError(f"unknown phase {phase!r}; allowed: {list(PHASES)} or an OptConfig")
