"""Model shape and optimization switches, both frozen dataclasses.

`ModelConfig` is the GPT-2 shape (seed shape by default). `OptConfig` has one field per
row of the study's bottleneck table (docs/study.md); each field names the *form* that row
runs in. `PHASES` holds the fixed presets and `MAX_CANDIDATES` what "max" chooses from: data,
not code paths (`phases.resolve` turns a name into an OptConfig, `model.resolve_forms` an
OptConfig into callables). `MAX_PRESETS` names the presets chosen by measurement: "max",
"max-int8" and "max-int4".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace


def _divisors(n: int, limit: int = 10**12) -> "list[int] | str":
    """Divisors of n in increasing order, by trial division up to sqrt(n) (bounded work)."""
    if n > limit:
        return f"(not listed: n_embd > {limit:.0e})"
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


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
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        eps = self.layer_norm_epsilon
        if (not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps)
                or eps < 0):
            raise ValueError(f"ModelConfig.layer_norm_epsilon must be a finite number >= 0, "
                             f"got {eps!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"ModelConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"n_head values allowed for n_embd={self.n_embd}: {_divisors(self.n_embd)}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# Named model shapes `smallmind train --shape` trains (same vocabulary, corpus and context).
# "wide": 6 x 512, ~19M parameters (76 MB of fp32 weights, past a desktop L3), so that a decode
# step is bound by reading the weights from memory, where the seed's 13 MB stay in cache; the
# speculative decoding part of the study measures on it (docs/study.md).
# GPT-2 small (124M parameters), the larger shape the study, the peers and the experiments
# measure at (random weights): its 500 MB of float32 weights are read from memory every step.
GPT2_SMALL = ModelConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024)

TRAINING_SHAPES: dict[str, ModelConfig] = {
    "seed": ModelConfig(),
    "wide": ModelConfig(n_layer=6, n_head=8, n_embd=512),
}


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
    # beyond the seed: a decode step is one C++ op for the whole model (embeddings, every
    # block's LN, qkv, cache write, attention, projections and MLP, ln_f, lm head) instead of
    # ~35 small op calls per block; needs kv_cache + workspace
    "fused_decode": (False, True),
    # beyond the seed: a prompt's prefill and speculative decoding's verify of T tokens through
    # the same op (decode_step_ on (B, T) tokens) instead of the phase's op-by-op forward
    "fused_prefill": (False, True),
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
    # beyond the seed: torch.compile of the forward and of a static-shape decode step
    # (compiled.py), instead of hand-written ops; "max-autotune" also tunes Inductor's kernels;
    # "cpp-wrapper" calls them from generated C++ instead of Python; "aot-inductor" runs the
    # decode step as an AOTInductor package (torch.export, compiled ahead of time)
    "compile": ("off", "inductor", "max-autotune", "cpp-wrapper", "aot-inductor"),
    # beyond the seed: the linear layers' and the lm head's weights as stored for the matmuls,
    # made once from the fp32 parameters, which stay as they are (weight_formats.py);
    # "int8" = weight-only int8 per output channel, float32 activations and arithmetic;
    # "bf16" = bfloat16 weights and activations in the dot products, float32 accumulation
    # (native bf16 dot products on AVX512_BF16); "w8a8" = int8's weights with int8 activations
    # (each row quantized on the fly) and exact int32 dot products (VNNI where present), as
    # the engines' int8 compute types do; "int4" = group-wise int4 weights (a scale per row and
    # group of 32 inputs, two weights per byte, ggml q4_0's layout) with w8a8's int8
    # activations and exact int32 sums per group; with matmul="torch" each is computed in
    # float32 on the rounded operands by the library's GEMM (the naive form)
    "weights": ("fp32", "int8", "bf16", "w8a8", "int4"),
}

# Forms that only make sense on top of others: (switch, form) -> the switches it needs.
REQUIRES = {
    ("fused_decode", True): {"kv_cache": True, "workspace": True},
    ("fused_prefill", True): {"fused_decode": True, "kv_cache": True, "workspace": True},
    # compiled code allocates its own intermediates and runs its own decode step
    ("compile", "inductor"): {"workspace": False, "fused_decode": False},
    ("compile", "max-autotune"): {"workspace": False, "fused_decode": False},
    ("compile", "cpp-wrapper"): {"workspace": False, "fused_decode": False},
    # the package is the decode step over the KV cache
    ("compile", "aot-inductor"): {"workspace": False, "fused_decode": False, "kv_cache": True},
    # compiled code reads the fp32 weights; the fused decode step has int8 variants
    # (decode_step_q8_, for int8 and w8a8) and an int4 one (decode_step_q4_), no bf16 one
    ("weights", "int8"): {"compile": "off"},
    ("weights", "w8a8"): {"compile": "off"},
    ("weights", "int4"): {"compile": "off"},
    ("weights", "bf16"): {"compile": "off", "fused_decode": False},
}

# Forms whose output is not the reference's up to float rounding: their error against fp32 is
# measured (study/measure/quantized.py) and bounded by their own tests; a phase with one is checked to
# 1e-4 against `reference_for(opt)`, the reference forms on the same rounded weights.
LOSSY_FORMS = {("weights", "int8"), ("weights", "bf16"), ("weights", "w8a8"), ("weights", "int4")}

# The check's bound on |logit difference| against reference_for(opt), by weight format, where
# float rounding (1e-4) is not enough: w8a8 and int4 round the activations to int8 and bf16 to
# bfloat16,
# and wherever two forms' float results straddle a rounding boundary an activation moves by one
# step of that format (max |row| / 127 for int8, 2^-8 of the value for bf16), which moves logits
# by up to a few 1e-2 (measured for bf16: 5e-3 at the seed shape, 1.2e-2 at 12 x 768; tested in
# test_quantized.py). Greedy tokens must still match.
CHECK_TOLERANCE = {"w8a8": 0.1, "bf16": 0.1, "int4": 0.1}


# The quality bound of a lossy candidate of "max" / "max-int8" / "max-int4" (tuning.py): its mean KL
# divergence KL(p_fp32 || p_candidate) of the next-token distribution, teacher-forced over a few
# fixed windows of random token ids (divergence.py), in nats. Measured on the trained seed
# checkpoint: int8 3e-5, w8a8 1.2e-4, bf16 6e-6 (80x and more below the bound); int8 rounded to
# 16x coarser steps (about 4 bits) 8e-3; int8 with every scale 10 % too large 0.06, 50 % too
# large 1.5 (6x and more over it). int4 (groups of 32, int8 activations) gives 6.0e-3 there (and
# 5.3e-3 teacher-forced over the validation split, perplexity 27.50 -> 27.65): under the bound,
# which holds max-int4's candidates too.
MAX_INT8_MEAN_KL = 0.01


def check_tolerance(opt: "OptConfig", tolerance: float = 1e-4) -> float:
    """The bound a phase's logits are checked to: `tolerance`, or its format's if larger."""
    return max(tolerance, CHECK_TOLERANCE.get(opt.weights, 0.0))

# Forms that need the C++ extension from ops/.
CUSTOM_OP_FORMS = {
    "fused_attention": "custom", "softmax": "custom", "matmul": "custom",
    "layernorm": "custom", "embedding_backward": "custom", "fused_decode": True,
    "fused_prefill": True,
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
    fused_prefill: bool = False
    softmax: str = "torch"
    matmul: str = "torch"
    layernorm: str = "torch"
    embedding_backward: str = "torch"
    init: str = "default"
    compile: str = "off"
    weights: str = "fp32"

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
    def custom_op_forms(self) -> list:
        """The switches set to a form that needs the C++ ops, as 'switch=form'."""
        return [f"{name}={form!r}" for name, form in CUSTOM_OP_FORMS.items()
                if getattr(self, name) == form]

    @property
    def needs_custom_ops(self) -> bool:
        return bool(self.custom_op_forms)


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
    # torch.compile (Inductor) of the reference forms with the static KV cache, gpt-fast style
    "compiled": _REFERENCE.replace(kv_cache=True, compile="inductor"),
}

# "max" names the fastest correct combination for a model, not one fixed OptConfig: these
# are the candidates, in order of preference where nothing was measured. `phases.resolve`
# keeps those the model's device and dtype can run (the custom ops are CPU float32 kernels
# and must build) and, when several run, takes the fastest measured on this machine
# (tuning.py); it says which. experiments/max_fastest.py measures them side by side.
_CUSTOM = _PHASE3.replace(fused_attention="custom")
MAX_CANDIDATES: dict[str, OptConfig] = {
    # the decode step, the prompt's prefill and a verify each one C++ op for the whole model
    "fused decode + fused prefill": _CUSTOM.replace(fused_decode=True, fused_prefill=True),
    # a decode step = one C++ op for the whole model; prefill on our GEMM, LayerNorm, attention
    "fused decode": _CUSTOM.replace(fused_decode=True),
    # the same decode step; prefill on the library's GEMM, LayerNorm and SDPA
    "fused decode + library prefill": _CUSTOM.replace(fused_decode=True, matmul="torch",
                                                      layernorm="torch", fused_attention="sdpa"),
    # every custom form, each op called on its own
    "custom ops": _CUSTOM,
    # no custom op: PyTorch SDPA with the KV cache and the workspace (any device and dtype)
    "sdpa + kv cache": _REFERENCE.replace(fused_attention="sdpa", workspace=True, kv_cache=True),
}

# "max-int8" is the fastest combination with int8 weights (weight-only, or w8a8 with int8
# activations), chosen the same way; its output is checked against reference_for(...), i.e.
# reference's forms on the same int8 weights. The last candidate needs no custom op (the
# library's GEMM on the dequantized weights).
MAX_INT8_CANDIDATES: dict[str, OptConfig] = {
    "int8 fused decode + fused prefill":
        MAX_CANDIDATES["fused decode + fused prefill"].replace(weights="int8"),
    "w8a8 fused decode + fused prefill":
        MAX_CANDIDATES["fused decode + fused prefill"].replace(weights="w8a8"),
    "int8 fused decode": MAX_CANDIDATES["fused decode"].replace(weights="int8"),
    # int8 activations too: VNNI dot products where the CPU has them
    "w8a8 fused decode": MAX_CANDIDATES["fused decode"].replace(weights="w8a8"),
    "int8 custom ops": MAX_CANDIDATES["custom ops"].replace(weights="int8"),
    "int8 sdpa + kv cache": MAX_CANDIDATES["sdpa + kv cache"].replace(weights="int8"),
}

# "max-int4" likewise with int4 weights (group-wise, int8 activations; the model's width must be
# a multiple of 32, the group size); the last candidate needs no custom op.
MAX_INT4_CANDIDATES: dict[str, OptConfig] = {
    "int4 fused decode + fused prefill":
        MAX_CANDIDATES["fused decode + fused prefill"].replace(weights="int4"),
    "int4 fused decode": MAX_CANDIDATES["fused decode"].replace(weights="int4"),
    "int4 custom ops": MAX_CANDIDATES["custom ops"].replace(weights="int4"),
    "int4 sdpa + kv cache": MAX_CANDIDATES["sdpa + kv cache"].replace(weights="int4"),
}

# preset name -> the candidates it chooses from
MAX_PRESETS: dict[str, dict] = {"max": MAX_CANDIDATES, "max-int8": MAX_INT8_CANDIDATES,
                                "max-int4": MAX_INT4_CANDIDATES}


def reference_for(opt: OptConfig) -> OptConfig:
    """What a phase's output is checked against: `reference`'s forms with the phase's weight
    format (for fp32 weights, `reference` itself)."""
    return _REFERENCE.replace(weights=opt.weights)


def presets() -> tuple:
    """Every name a phase can be given by: the presets of PHASES (read at call time, so one
    added to it counts), then "max", "max-int8" and "max-int4"."""
    return (*PHASES, *MAX_PRESETS)
