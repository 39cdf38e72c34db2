"""A phase made ready to run on one model: what `phases.resolve` returns and `GPT.phase` holds.

`phases.decide` says *which* configuration runs (for "max": the candidate measured fastest); a
`PhaseRuntime` is that decision made concrete for one model, everything the phase needs beyond
the model's parameters:
- `forms`: the callables of every switch (`resolve_forms`); the modules, the workspace forward
  and the decode step call these and never read a switch;
- `weights`: each linear layer's weight as the `weights` switch stores it (a QuantizedWeight for
  int8 and w8a8, a bf16 tensor for bf16), made from the fp32 parameters when the runtime is
  made (fp32: none, the forms read the parameters);
- the KV caches, the fused decode step (its argument pack) and the workspace, made on first use;
  `cache_length` and `cache_batch` say what the cache holds, and `epoch` changes whenever a
  call writes it (an open generate_stream checks it).

What a runtime made from the parameters (the copies in another format, an AOTInductor package,
the fused step's argument pack) would go stale when they change: `GPT` calls `refresh(model)` at
every forward, prefill and generation start, which makes them again when a parameter was
replaced, edited in place or moved, and drops the caches. It costs a counter compare (plus one
version check per copied weight) unless a parameter or module was registered somewhere since.
A write through `.data` (`w.data.copy_(...)`) bumps no version, so nothing can see it: making
the runtime again (`set_phase`) makes every copy again, the custom GEMM's packed weights
included.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from . import compiled, ops, workspace
from .attention import resolve as resolve_attention
from .config import OptConfig
from .forms import (EMBEDDING, LAYER_NORM, LINEAR_BY_WEIGHTS, inference_only, labelled_embedding,
                    labelled_layer_norm, labelled_linear)
from .fused_decode import FusedStep
from .kv_cache import KVCache
from .weight_formats import INT8_FORMATS, prepare


@dataclass(frozen=True)
class Phase:
    """What a phase resolved to: pure data (phases.decide)."""

    name: str            # what it was asked by: a preset name, or "custom" for an OptConfig
    opt: OptConfig       # what runs
    description: str     # e.g. "max = fused decode (custom ops, CPU float32)"
    requested: "str | OptConfig"  # what set_phase was given ("max" is chosen again on .to())


@dataclass(frozen=True)
class Forms:
    """Every callable a phase runs. The modules, the workspace forward and the fused decode
    step call these and never read a switch."""

    layer_norm: Callable      # (x, ln_module, out=None, ws=None)
    linear: Callable          # (x, linear_module, out=None)
    embedding: Callable       # (idx, weight) -> (B, T, C)
    attention: Callable       # (q, k, v, q_offset, future_mask) -> (B, nh, Tq, hs)
    attention_into: Callable  # (q, k, v, q_offset, future_mask, out, ws) -> out
    forward: Callable         # (model, idx, start, last_only, use_cache) -> (B, T or 1, V)
    prefill: Callable         # (model, idx, start, last_only) -> (B, T or 1, V), through the
                              # KV cache: a prompt's prefill, a verify
    decode: Callable          # (model, token (B, 1), start) -> (B, 1, V), through the KV cache
    decode_greedy: Callable   # (model, token (B, 1), start) -> the argmax ids (B, 1)
    reuses_buffers: bool      # forward / decode return views of the workspace


def allocating_forward(model, idx, start, last_only, use_cache):
    """The reference forward through the modules (GPT.allocating_forward)."""
    return model.allocating_forward(idx, start, last_only, use_cache)


def fused_decode(model, token, start):
    return model.phase.fused_step(token, start)[0]


def fused_decode_greedy(model, token, start):  # the argmax in the same C++ call
    return model.phase.fused_step(token, start)[1]


def fused_prefill(model, idx, start, last_only):
    return model.phase.fused_step(idx, start, last_only)[0]


# From this many rows (B * T) a prefill (or verify) on int8 weights (INT8_FORMATS) leaves the
# fused op for the modules, whose int8 linears hand such rows to the library's GEMM
# (linear_lowp.cpp: kLibraryGemmRows), while the op's row-batched int8 products re-read every
# input row for each 8 columns (measured: docs/study.md, the fused prefill). int4 stays fused
# (its modules have no GEMM); float32 has the op's own blocked GEMM from 8 rows.
INT8_MODULE_PREFILL_ROWS = 32


def resolve_forms(opt: OptConfig, weights: "dict | None" = None) -> Forms:
    """The one place an OptConfig's forms become callables (attention's cross-switch rule is in
    attention.resolve). `weights`: linear module -> its weight in opt's format (None for fp32)."""
    attention, attention_into = resolve_attention(opt)
    forward = workspace.inference_forward if opt.workspace else allocating_forward
    if opt.compile != "off":
        forward = compiled.compile_forward(forward, opt.compile)
    if opt.weights != "fp32":
        forward = inference_only(forward, opt.weights)
    if opt.fused_decode:
        decode, decode_greedy = fused_decode, fused_decode_greedy
    else:
        if opt.compile != "off" and opt.kv_cache:
            decode = compiled.compile_decode(opt.compile)
        else:
            def decode(model, token, start):
                return forward(model, token, start, True, True)

        def decode_greedy(model, token, start):
            return decode(model, token, start)[:, -1, :].argmax(dim=-1, keepdim=True)
    if opt.fused_prefill and opt.weights in INT8_FORMATS:
        def prefill(model, idx, start, last_only):
            if idx.numel() >= INT8_MODULE_PREFILL_ROWS:  # B * T rows
                return forward(model, idx, start, last_only, True)
            return fused_prefill(model, idx, start, last_only)
    elif opt.fused_prefill:
        prefill = fused_prefill
    else:
        def prefill(model, idx, start, last_only):
            return forward(model, idx, start, last_only, True)
    return Forms(layer_norm=labelled_layer_norm(LAYER_NORM[opt.layernorm]),
                 linear=labelled_linear(LINEAR_BY_WEIGHTS[opt.weights][opt.matmul], weights),
                 embedding=labelled_embedding(EMBEDDING[opt.embedding_backward]),
                 attention=attention, attention_into=attention_into,
                 forward=forward, prefill=prefill, decode=decode, decode_greedy=decode_greedy,
                 reuses_buffers=opt.workspace)


class PhaseRuntime:
    """A phase (`Phase`: name, opt, description) with the state it runs on for one model."""

    def __init__(self, model, phase: Phase):
        self.name, self.opt, self.description = phase.name, phase.opt, phase.description
        self.requested = phase.requested
        param = model.transformer.wte.weight
        self.dtype, self.device = param.dtype, param.device
        # What is made from the parameters goes stale when they change (refresh)
        self.derived = (phase.opt.weights != "fp32" or phase.opt.fused_decode
                        or phase.opt.compile == "aot-inductor")
        self.epoch = 0
        self._prepare(model)

    @property
    def decision(self) -> Phase:
        """What phases.decide decided, as data (pickled with the model in its place)."""
        return Phase(self.name, self.opt, self.description, self.requested)

    def _prepare(self, model) -> None:
        """The weights in the phase's format and the forms over them; no caches yet."""
        fmt = self.opt.weights
        if fmt == "fp32" and (self.opt.matmul == "custom" or self.opt.fused_prefill):
            # the custom GEMM's and the fused prefill's packed weights, packed before a write
            # through `.data`, which has no version
            _drop_packed_weights()
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        self.weights = None if fmt == "fp32" else {m: prepare(m.weight, fmt) for m in linears}
        self.forms = resolve_forms(self.opt, self.weights)
        if self.derived:
            self.sources = _parameters_of(model)
            # what refresh checks first: the weights copied into another format, or every
            # parameter where an AOTInductor package holds them as constants (the fused step
            # reads the parameters themselves, so it sees their new values as they are)
            if self.opt.compile == "aot-inductor":
                copied = list(model.parameters())
            else:
                copied = () if fmt == "fp32" else {id(m.weight): m.weight for m in linears}.values()
            self.copied = _Sources((w, w._version, w.data_ptr()) for w in copied)
            self.registrations = _registrations
        self.reset()

    def reset(self) -> None:
        """Drop the KV caches, the fused step and the workspace (made again on first use)."""
        self.kv_caches: "list | None" = None
        self.fused_step: "FusedStep | None" = None
        self._workspace: "workspace.Workspace | None" = None
        self.cache_length = 0    # positions the KV cache holds
        self.cache_batch = 0     # sequences filled by the last prefill
        self.epoch += 1

    def refresh(self, model) -> None:
        """Make the weights in the phase's format and the fused step's arguments again if a
        parameter of `model` was replaced, edited in place (its version) or re-pointed
        (`.data = ...`) since they were made; a phase that made nothing from them skips this."""
        if not self.derived:
            return
        if self.registrations == _registrations and self.copied == self.copied.now():
            return  # no parameter or module (re)registered anywhere, no copied weight changed
        if _parameters_of(model) != self.sources:
            self._prepare(model)
        else:
            self.registrations = _registrations

    def decode(self, model, token):
        """One token per sequence after what the KV cache holds: logits (B, V). Unchecked and
        unlocked: GPT.decode_step (and generate_stream, which holds the lock) call it."""
        self.epoch += 1
        logits = self.forms.decode(model, token, self.cache_length)
        self.cache_length += 1
        return logits[:, -1, :]

    def decode_greedy(self, model, token):
        """decode and its argmax: the next token ids (B, 1) (one C++ call with fused decode)."""
        self.epoch += 1
        ids = self.forms.decode_greedy(model, token, self.cache_length)
        self.cache_length += 1
        return ids

    def decode_greedy_run(self, model, tokens, first: int, count: int) -> None:
        """`count` greedy decode steps: step i reads tokens[:, first + i - 1] and writes its
        argmax to tokens[:, first + i] (tokens: a run's (B, N) buffer). With fused decode one
        C++ call runs them all, with no Python between the steps. Unchecked and unlocked, as
        decode is: generation.generate calls it, within the cache's room."""
        if self.fused_step is None:
            for n in range(first, first + count):
                tokens[:, n:n + 1] = self.decode_greedy(model, tokens[:, n - 1:n])
            return
        self.epoch += 1
        self.fused_step.generate_greedy(tokens, first, count, self.cache_length)
        self.cache_length += count

    @property
    def workspace(self) -> "workspace.Workspace":
        """The phase's preallocated buffers (workspace phases), made on first use."""
        if self._workspace is None:
            self._workspace = workspace.Workspace(dtype=self.dtype, device=self.device)
        return self._workspace

    def setup_caches(self, model, max_batch: int) -> None:
        """Each layer's K and V buffers, allocated once for up to max_batch sequences, and the
        fused step over them."""
        c = model.config
        # made outside inference mode even inside it (see Workspace.take)
        with torch.inference_mode(False):
            kv_caches = [KVCache(max_batch, c.n_head, c.block_size, c.head_dim,
                                 dtype=self.dtype, device=self.device) for _ in range(c.n_layer)]
        fused_step = FusedStep(model, kv_caches, self.workspace, self.opt.weights,
                               self.weights) if self.opt.fused_decode else None
        self.kv_caches, self.fused_step = kv_caches, fused_step  # both, or neither if one failed
        self.cache_length = self.cache_batch = 0
        self.epoch += 1


def _drop_packed_weights() -> None:
    """Empty the custom GEMM's cache of packed weights (ops.packed_weight_cache), keeping its
    capacity: every weight is packed again from its values as they are now."""
    capacity = ops.packed_weight_cache()["capacity_bytes"]
    ops.packed_weight_cache(0)
    ops.packed_weight_cache(capacity)


class _Sources(tuple):
    """The parameters a runtime was made from, each with its version and data pointer: equal
    to another only if every parameter is the same object, unchanged and at the same place
    (tuples of tensors would compare their values)."""

    def __eq__(self, other):
        return (isinstance(other, _Sources) and len(self) == len(other)
                and all(p is q and v == w and d == e
                        for (p, v, d), (q, w, e) in zip(self, other)))

    def __ne__(self, other):
        return not self == other

    __hash__ = None

    def now(self) -> "_Sources":
        """The same parameters as they are now."""
        return _Sources((p, p._version, p.data_ptr()) for p, _, _ in self)


def _parameters_of(model) -> _Sources:
    return _Sources((p, p._version, p.data_ptr()) for p in model.parameters())


# Parameters and submodules registered on any module since import (a Parameter replaced, a
# load_state_dict(assign=True), a block swapped): what makes refresh walk the model's parameters
_registrations = 0


def _count_registration(module, name, value):
    global _registrations
    _registrations += 1


nn.modules.module.register_module_parameter_registration_hook(_count_registration)
nn.modules.module.register_module_module_registration_hook(_count_registration)
