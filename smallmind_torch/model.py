"""The reference GPT (GPT-2 architecture), nanoGPT style, with phase switches.

The modules below are the readable reference. Each step that a switch covers (LayerNorm,
the linear layers' matmul, the token embedding, attention) calls the form the current phase
selected: `set_phase` resolves the OptConfig once into a `Forms` bundle of callables
(`resolve_forms`), so the hot path never reads a switch. The preallocated-buffer forward lives
beside this file in workspace.py, the fused decode step in fused_decode.py and the KV cache in
kv_cache.py, so that a reader can diff the reference against the fast paths.
"""
from __future__ import annotations

import contextlib
import functools
import math
import threading
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import compiled, fused_decode, generation, phases, workspace
from .attention import resolve as resolve_attention
from .config import MAX_PRESETS, ModelConfig, OptConfig
from .forms import (EMBEDDING, LAYER_NORM, LINEAR_BY_WEIGHTS, labelled_embedding,
                    labelled_layer_norm, labelled_linear)
from .kv_cache import KVCache
from .labels import region


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.n_head = config.n_head
        self.n_embd = config.n_embd

    def forward(self, x, forms, future_mask, start=0, kv_cache=None):
        B, T, C = x.size()
        q, k, v = forms.linear(x, self.c_attn).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if kv_cache is not None:
            with region("kv_cache"):
                k, v = kv_cache.update(start, k, v)  # (B, nh, start + T, hs)
        y = forms.attention(q, k, v, start, future_mask)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return forms.linear(y, self.c_proj)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x, forms):
        return forms.linear(F.gelu(forms.linear(x, self.c_fc), approximate="tanh"), self.c_proj)


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, forms, future_mask, start=0, kv_cache=None):
        x = x + self.attn(forms.layer_norm(x, self.ln_1), forms, future_mask, start, kv_cache)
        return x + self.mlp(forms.layer_norm(x, self.ln_2), forms)


# ---- a phase's forms, resolved once -----------------------------------------------------------

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
    decode: Callable          # (model, token (B, 1), start) -> (B, 1, V), through the KV cache
    decode_greedy: Callable   # (model, token (B, 1), start) -> the argmax ids (B, 1)
    reuses_buffers: bool      # forward / decode return views of the workspace


def resolve_forms(opt: OptConfig) -> Forms:
    """The one place an OptConfig's forms become callables (attention's cross-switch rule is in
    attention.resolve)."""
    attention, attention_into = resolve_attention(opt)
    forward = workspace.inference_forward if opt.workspace else GPT.allocating_forward
    if opt.compile != "off":
        forward = compiled.compile_forward(forward, opt.compile)
    if opt.fused_decode and opt.weights in ("int8", "w8a8"):  # the same step on int8 weights
        decode = functools.partial(fused_decode.decode_step_q8, weights=opt.weights)
        decode_greedy = functools.partial(fused_decode.decode_greedy_q8, weights=opt.weights)
    elif opt.fused_decode:  # the argmax in the same C++ call
        decode, decode_greedy = fused_decode.decode_step, fused_decode.decode_greedy
    else:
        if opt.compile != "off" and opt.kv_cache:
            decode = compiled.compile_decode(opt.compile)
        else:
            def decode(model, token, start):
                return forward(model, token, start, True, True)

        def decode_greedy(model, token, start):
            return decode(model, token, start)[:, -1, :].argmax(dim=-1, keepdim=True)
    return Forms(layer_norm=labelled_layer_norm(LAYER_NORM[opt.layernorm]),
                 linear=labelled_linear(LINEAR_BY_WEIGHTS[opt.weights][opt.matmul]),
                 embedding=labelled_embedding(EMBEDDING[opt.embedding_backward]),
                 attention=attention, attention_into=attention_into,
                 forward=forward, decode=decode, decode_greedy=decode_greedy,
                 reuses_buffers=opt.workspace)


class GPT(nn.Module):
    def __init__(self, config: ModelConfig = ModelConfig(), phase: "str | OptConfig" = "reference"):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"GPT needs a ModelConfig, got {type(config).__name__}")
        self.config = config
        opt = phases.resolve(phase, device="cpu", dtype=torch.get_default_dtype()).opt
        # One draw from the global RNG seeds the init, so both init forms (bottleneck 8)
        # give identical parameters under the same torch.manual_seed.
        init_seed = int(torch.randint(0, 2**62, ()))
        if opt.init == "fast":  # no per-module default init: build on meta, then fill once
            with torch.device("meta"):
                self._build(config)
            self.to_empty(device="cpu")
            self.lm_head.weight = self.transformer.wte.weight  # to_empty unties shared tensors
        else:
            self._build(config)
        self._initialize(torch.Generator().manual_seed(init_seed), per_module=opt.init == "default")
        # True where key j lies in the future of query i; not in the state_dict.
        future = torch.ones(config.block_size, config.block_size, dtype=torch.bool).triu(1)
        self.register_buffer("future_mask", future, persistent=False)
        # 0..block_size-1 and the position of a decode step, as tensors: compiled code masks
        # and indexes with them, so a new position is new data, not a new graph
        self.register_buffer("positions", torch.arange(config.block_size), persistent=False)
        self.register_buffer("input_pos", torch.zeros(1, dtype=torch.long), persistent=False)
        # The KV cache and the workspace are state of the model object: every call that uses
        # them holds this lock (two threads calling generate() are served one after the
        # other), and `cache_epoch` changes whenever the cache is written or reset, so an open
        # generate_stream notices that another call used the model in between and stops with
        # an error instead of continuing from someone else's cache.
        self.lock = threading.RLock()
        self.cache_epoch = 0
        self.set_phase(phase)

    def __getstate__(self):  # copy.deepcopy / pickle: a lock is not copyable, make a new one
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {k: v for k, v in state.items() if k != "lock"}

    def __setstate__(self, state):
        super().__setstate__(state)
        self.lock = threading.RLock()

    def _build(self, config):
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2

    def _init_parameter(self, name, param, generator):
        # GPT-2: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer).
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
            param.fill_(1.0)
        elif name.endswith("bias"):
            param.zero_()
        else:
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if name.endswith("c_proj.weight") else 0.02
            param.normal_(0.0, std, generator=generator)

    @torch.no_grad()
    def _initialize(self, generator, per_module):
        if per_module:  # the seed's way: module by module, over what each already initialized
            for module_name, module in self.named_modules():
                if module is self.lm_head:
                    continue  # tied to wte
                for name, param in module.named_parameters(recurse=False):
                    self._init_parameter(f"{module_name}.{name}", param, generator)
        else:  # one pass over the parameters, nothing initialized before
            for name, param in self.named_parameters():
                self._init_parameter(name, param, generator)

    # ---- phases ---------------------------------------------------------------------------

    def set_phase(self, phase: "str | OptConfig") -> "GPT":
        """Switch every form in place: a preset name (config.presets(): PHASES, "max", "max-int8") or an
        OptConfig. Parameters are untouched; KV caches and the workspace belong to the previous
        phase and are dropped. `self.phase` says what runs (for "max": which candidate). The
        `init` switch acts at construction only: pass `phase=` to GPT(...) for fast init."""
        param = self.transformer.wte.weight
        resolved = phases.resolve(phase, device=param.device, dtype=param.dtype, model=self)
        with self.lock:
            self.phase, self.requested_phase = resolved, phase
            self.opt = resolved.opt
            self.forms = resolve_forms(self.opt)
            self.reset_caches()
        return self

    @contextlib.contextmanager
    def using(self, phase: "str | OptConfig"):
        """`with model.using(phase):` runs the block in `phase`, then returns to the phase the
        model had before."""
        previous = self.requested_phase
        self.set_phase(phase)
        try:
            yield self
        finally:
            self.set_phase(previous)

    def _apply(self, fn, *args, **kwargs):
        # .to(device / dtype): "max" (and "max-int8") is chosen again for the new device and dtype, and the
        # buffers of the previous phase are dropped.
        super()._apply(fn, *args, **kwargs)
        if hasattr(self, "phase"):
            if isinstance(self.requested_phase, str) and self.requested_phase in MAX_PRESETS:
                self.set_phase(self.requested_phase)
            self.reset_caches()
        return self

    def reset_caches(self) -> None:
        self.cache_epoch += 1
        self.kv_caches: "nn.ModuleList | None" = None
        self.block_params: "list | None" = None  # fused_decode.block_params of each block
        self.decode_args = None                  # fused_decode.StepArgs, made at the first step
        self.cache_length = 0                    # positions held by the KV cache
        self.cache_batch = 0                     # sequences filled by the last prefill
        self._workspace: "workspace.Workspace | None" = None

    @property
    def workspace(self) -> "workspace.Workspace":
        """The phase's preallocated buffers (workspace phases), made on first use."""
        if self._workspace is None:
            param = self.transformer.wte.weight
            self._workspace = workspace.Workspace(dtype=param.dtype, device=param.device)
        return self._workspace

    # ---- forward ----------------------------------------------------------------------------

    def check_idx(self, idx, *, max_len):
        """Raise ValueError unless idx is a (B, T) LongTensor of valid token ids, T <= max_len."""
        if not isinstance(idx, torch.Tensor) or idx.dtype != torch.long or idx.dim() != 2:
            raise ValueError(f"idx must be a LongTensor of shape (B, T); got "
                             f"{getattr(idx, 'dtype', type(idx).__name__)} {tuple(getattr(idx, 'shape', ()))}")
        B, T = idx.shape
        if B < 1 or T < 1:
            raise ValueError(f"idx must have B >= 1 and T >= 1; got shape {tuple(idx.shape)}")
        if idx.device != self.future_mask.device:
            raise ValueError(f"idx is on {idx.device} but the model is on {self.future_mask.device}")
        if max_len is not None and T > max_len:
            raise ValueError(f"sequence length {T} exceeds {max_len} (block_size is "
                             f"{self.config.block_size}); crop the prompt or use generate(), which crops")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size - 1}]; got min {lo}, max {hi}")

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab_size) of a full forward from position 0 (no KV cache)."""
        self.check_idx(idx, max_len=self.config.block_size)
        with self.lock:
            logits = self.forms.forward(self, idx, 0, False, False)
            return logits.clone() if self.forms.reuses_buffers else logits

    def allocating_forward(self, idx, start=0, last_only=False, use_cache=False):
        """The reference forward through the modules (autograd-capable): logits of tokens at
        positions start..start+T-1, through the KV cache if use_cache."""
        B, T = idx.size()
        forms = self.forms
        tok_emb = forms.embedding(idx, self.transformer.wte.weight)  # (B, T, C)
        pos_emb = self.transformer.wpe.weight[start:start + T]  # (T, C)
        x = tok_emb + pos_emb
        for i, block in enumerate(self.transformer.h):
            kv_cache = self.kv_caches[i] if use_cache else None
            x = block(x, forms, self.future_mask, start, kv_cache)
        x = forms.layer_norm(x, self.transformer.ln_f)
        if last_only:  # generation needs only the next token's logits
            x = x[:, -1:, :]  # (B, 1, C)
        return forms.linear(x, self.lm_head)  # (B, T or 1, vocab_size)

    @torch.no_grad()
    def forward_last(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) of the token after idx, from a full forward over idx (no cache).
        No argument checks; on workspace phases a view valid until the next call on the model
        (hold `model.lock` while using it from several threads): the no-cache generation step."""
        with self.lock:
            return self.forms.forward(self, idx, 0, True, False)[:, -1, :]

    def setup_workspace(self, max_batch: int = 1) -> "workspace.Workspace":
        """Size every workspace buffer for (max_batch, block_size) with one dry forward."""
        if not self.opt.workspace:
            raise ValueError("setup_workspace needs a phase with workspace=True; "
                             "the current OptConfig has workspace=False")
        _check_batch(max_batch)
        idx = torch.zeros(max_batch, self.config.block_size, dtype=torch.long,
                          device=self.transformer.wte.weight.device)
        with torch.no_grad(), self.lock:
            workspace.workspace_forward(self, idx, 0, False, False)
        return self.workspace

    # ---- KV cache: prefill once, then one token per step ---------------------------------

    def setup_caches(self, max_batch: int = 1) -> None:
        """Allocate each layer's K and V buffers once, for up to max_batch sequences."""
        if not self.opt.kv_cache:
            raise ValueError("setup_caches needs a phase with kv_cache=True")
        _check_batch(max_batch)
        c, param = self.config, self.transformer.wte.weight
        # made outside inference mode even inside it (see Workspace.take)
        with self.lock, torch.inference_mode(False):
            self.kv_caches = nn.ModuleList([
                KVCache(max_batch, c.n_head, c.block_size, c.head_dim, dtype=param.dtype,
                        device=param.device)
                for _ in range(c.n_layer)])
            if self.opt.fused_decode:
                self.block_params = [fused_decode.block_params(b) for b in self.transformer.h]
            self.decode_args = None
            self.cache_length = self.cache_batch = 0
            self.cache_epoch += 1

    @torch.no_grad()
    def prefill(self, idx: torch.Tensor) -> torch.Tensor:
        """Run the prompt (B, T <= block_size) into the cache; return next-token logits (B, V)."""
        if not self.opt.kv_cache:
            raise ValueError("prefill needs a phase with kv_cache=True")
        self.check_idx(idx, max_len=self.config.block_size)
        B, T = idx.shape
        with self.lock:
            if self.kv_caches is None:
                self.setup_caches(max_batch=B)
            if B > self.kv_caches[0].max_batch:
                raise ValueError(f"batch {B} exceeds the KV cache's max_batch "
                                 f"{self.kv_caches[0].max_batch}; call setup_caches(max_batch={B})")
            self.cache_epoch += 1
            logits = self.forms.forward(self, idx, 0, True, True)[:, -1, :]
            self.cache_length, self.cache_batch = T, B
            return logits.clone() if self.forms.reuses_buffers else logits

    @torch.no_grad()
    def decode_one_token(self, token: torch.Tensor) -> torch.Tensor:
        """Append one token per sequence (B, 1) after what the cache holds; logits (B, V)."""
        if not isinstance(token, torch.Tensor) or token.dim() != 2 or token.size(1) != 1:
            raise ValueError(f"token must have shape (B, 1); got {tuple(getattr(token, 'shape', ()))}")
        self.check_idx(token, max_len=1)
        with self.lock:
            if self.kv_caches is None or self.cache_length == 0:
                raise ValueError("decode_one_token needs a filled KV cache: call prefill first "
                                 "(switching phase resets the cache)")
            if token.size(0) > self.cache_batch:
                raise ValueError(f"batch {token.size(0)} exceeds the {self.cache_batch} sequences of "
                                 "the last prefill; decode needs every sequence prefilled to the "
                                 "same position")
            if self.cache_length >= self.config.block_size:
                raise ValueError(f"the KV cache is full (block_size = {self.config.block_size} "
                                 "tokens); re-prefill a cropped window (generate() does this)")
            logits = self.decode_step(token)
            return logits.clone() if self.forms.reuses_buffers else logits

    @torch.no_grad()
    def decode_step(self, token: torch.Tensor) -> torch.Tensor:
        """decode_one_token without the argument checks, for a generation loop's own tokens:
        logits (B, V), on workspace phases a view valid until the next call on the model (hold
        `model.lock` while using it from several threads)."""
        with self.lock:
            self.cache_epoch += 1
            logits = self.forms.decode(self, token, self.cache_length)
            self.cache_length += 1
            return logits[:, -1, :]

    @torch.no_grad()
    def decode_greedy_step(self, token: torch.Tensor) -> torch.Tensor:
        """decode_step and its argmax: the next token ids (B, 1), unchecked like decode_step.
        With fused decode both happen in one C++ call and the ids are a workspace view."""
        with self.lock:
            self.cache_epoch += 1
            ids = self.forms.decode_greedy(self, token, self.cache_length)
            self.cache_length += 1
            return ids

    # ---- generation ---------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=0.0, top_k=None, generator=None):
        """(B, T + max_new_tokens): the prompt followed by the generated tokens."""
        return generation.generate(self, idx, max_new_tokens, temperature, top_k, generator)

    def generate_stream(self, idx, max_new_tokens, temperature=0.0, top_k=None, generator=None):
        """Yield the generated tokens one step at a time, each (B, 1)."""
        return generation.generate_stream(self, idx, max_new_tokens, temperature, top_k, generator)

    # ---- interop -------------------------------------------------------------------------

    @classmethod
    def from_hf(cls, model_or_state_dict, n_head=None, phase="reference") -> "GPT":
        """A GPT with the weights of a Hugging Face GPT2LMHeadModel, its state_dict, or a
        nanoGPT state_dict (n_head must be given for a bare state_dict)."""
        from .hf import from_hf

        return from_hf(cls, model_or_state_dict, n_head=n_head, phase=phase)

    def to_hf(self):
        """A transformers GPT2LMHeadModel with these weights (needs the [hf] extra)."""
        from .hf import to_hf

        return to_hf(self)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _check_batch(max_batch) -> None:
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
