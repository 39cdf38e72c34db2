"""The reference GPT (GPT-2 architecture), nanoGPT style, with phase switches.

The modules below are the readable reference. Each step that a switch covers (LayerNorm,
the linear layers' matmul, the token embedding, attention) calls the form the current phase
selected: `set_phase` resolves the OptConfig once into a runtime (`model.phase`, runtime.py:
the forms as callables, the weights in the phase's format, the KV caches, the workspace), so
the hot path never reads a switch. The preallocated-buffer forward lives beside this file in
workspace.py, the fused decode step in fused_decode.py and the KV cache in kv_cache.py, so that
a reader can diff the reference against the fast paths.
"""
from __future__ import annotations

import contextlib
import math
import threading

import torch
import torch.nn.functional as F
from torch import nn

from . import generation, phases
from .config import MAX_PRESETS, ModelConfig, OptConfig
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


class GPT(nn.Module):
    def __init__(self, config: ModelConfig = ModelConfig(), phase: "str | OptConfig" = "reference"):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"GPT needs a ModelConfig, got {type(config).__name__}")
        self.config = config
        opt = phases.decide(phase, device="cpu", dtype=torch.get_default_dtype()).opt
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
        try:
            future = torch.ones(config.block_size, config.block_size, dtype=torch.bool).triu(1)
        except RuntimeError as exc:  # the allocator's "can't allocate memory"
            raise ValueError(f"block_size={config.block_size} needs a causal mask of "
                             f"block_size^2 = {config.block_size ** 2:.3g} bytes, more than can "
                             "be allocated here") from exc
        self.register_buffer("future_mask", future, persistent=False)
        # 0..block_size-1 and the position of a decode step, as tensors: compiled code masks
        # and indexes with them, so a new position is new data, not a new graph
        self.register_buffer("positions", torch.arange(config.block_size), persistent=False)
        self.register_buffer("input_pos", torch.zeros(1, dtype=torch.long), persistent=False)
        # The phase's state (KV cache, workspace) is the model's: every call that uses it holds
        # this lock, so two threads calling generate() are served one after the other.
        self.lock = threading.RLock()
        self.register_load_state_dict_post_hook(_tie_lm_head)
        self.phase = None  # the runtime of the current phase (runtime.PhaseRuntime)
        self.set_phase(phase)

    def __getstate__(self):  # copy.deepcopy / pickle: no lock, the phase as data (runtime.Phase)
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = {k: v for k, v in state.items() if k != "lock"}
        state["phase"] = state["phase"].decision if state.get("phase") is not None else None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.lock = threading.RLock()
        if self.phase is not None:  # made ready again on the copied parameters
            self.phase = phases.resolve(self.phase, self)

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
        OptConfig. Parameters are untouched; the previous phase's KV caches and workspace go with
        it. `self.phase` says what runs (for "max": which candidate). The `init` switch acts at
        construction only: pass `phase=` to GPT(...) for fast init."""
        with self.lock:
            self.phase = phases.resolve(phase, self)
        return self

    @contextlib.contextmanager
    def using(self, phase):
        """`with model.using(phase):` runs the block in `phase` (a name, an OptConfig or a
        runtime of this model), holding the model's lock, then puts the previous runtime back
        as it was (its KV cache included)."""
        with self.lock:
            previous = self.phase
            self.phase = phases.resolve(phase, self)
            try:
                yield self
            finally:
                self.phase = previous

    def _apply(self, fn, *args, **kwargs):
        # .to(device / dtype): the phase is made ready again on the moved parameters; "max" (and
        # "max-int8") is chosen again for the new device and dtype.
        super()._apply(fn, *args, **kwargs)
        if getattr(self, "phase", None) is not None:  # not while __init__ builds the modules
            requested = self.phase.requested
            chosen_again = isinstance(requested, str) and requested in MAX_PRESETS
            self.set_phase(requested if chosen_again else self.phase.decision)
        return self

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
            rt = self.phase
            rt.refresh(self)
            logits = rt.forms.forward(self, idx, 0, False, False)
            return logits.clone() if rt.forms.reuses_buffers else logits

    def allocating_forward(self, idx, start=0, last_only=False, use_cache=False):
        """The reference forward through the modules (autograd-capable): logits of tokens at
        positions start..start+T-1, through the KV cache if use_cache."""
        B, T = idx.size()
        forms, kv_caches = self.phase.forms, self.phase.kv_caches
        tok_emb = forms.embedding(idx, self.transformer.wte.weight)  # (B, T, C)
        pos_emb = self.transformer.wpe.weight[start:start + T]  # (T, C)
        x = tok_emb + pos_emb
        for i, block in enumerate(self.transformer.h):
            kv_cache = kv_caches[i] if use_cache else None
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
            return self.phase.forms.forward(self, idx, 0, True, False)[:, -1, :]

    def setup_workspace(self, max_batch: int = 1):
        """Size every workspace buffer for (max_batch, block_size) with one dry forward; the
        phase's workspace (workspace.Workspace)."""
        if not self.phase.opt.workspace:
            raise ValueError("setup_workspace needs a phase with workspace=True; "
                             "the current OptConfig has workspace=False")
        _check_batch(max_batch)
        idx = torch.zeros(max_batch, self.config.block_size, dtype=torch.long,
                          device=self.transformer.wte.weight.device)
        with torch.no_grad(), self.lock:
            rt = self.phase
            rt.refresh(self)
            rt.forms.forward(self, idx, 0, False, False)
            return rt.workspace

    # ---- KV cache: prefill once, then one token per step ---------------------------------

    def setup_caches(self, max_batch: int = 1) -> None:
        """Allocate each layer's K and V buffers once, for up to max_batch sequences."""
        if not self.phase.opt.kv_cache:
            raise ValueError("setup_caches needs a phase with kv_cache=True")
        _check_batch(max_batch)
        with self.lock:
            self.phase.refresh(self)
            self.phase.setup_caches(self, max_batch)

    @torch.no_grad()
    def prefill(self, idx: torch.Tensor) -> torch.Tensor:
        """Run the prompt (B, T <= block_size) into the cache; return next-token logits (B, V)."""
        if not self.phase.opt.kv_cache:
            raise ValueError("prefill needs a phase with kv_cache=True")
        self.check_idx(idx, max_len=self.config.block_size)
        B, T = idx.shape
        with self.lock:
            rt = self.phase
            rt.refresh(self)
            if rt.kv_caches is None:
                rt.setup_caches(self, max_batch=B)
            if B > rt.kv_caches[0].max_batch:
                raise ValueError(f"batch {B} exceeds the KV cache's max_batch "
                                 f"{rt.kv_caches[0].max_batch}; call setup_caches(max_batch={B})")
            rt.epoch += 1
            logits = rt.forms.prefill(self, idx, 0, True)[:, -1, :]
            rt.cache_length, rt.cache_batch = T, B
            return logits.clone() if rt.forms.reuses_buffers else logits

    @torch.no_grad()
    def decode_one_token(self, token: torch.Tensor) -> torch.Tensor:
        """Append one token per sequence (B, 1) after what the cache holds; logits (B, V)."""
        if not isinstance(token, torch.Tensor) or token.dim() != 2 or token.size(1) != 1:
            raise ValueError(f"token must have shape (B, 1); got {tuple(getattr(token, 'shape', ()))}")
        self.check_idx(token, max_len=1)
        with self.lock:
            rt = self.phase
            rt.refresh(self)
            if rt.kv_caches is None or rt.cache_length == 0:
                raise ValueError("decode_one_token needs a filled KV cache: call prefill first "
                                 "(switching phase, or changing the weights of a phase that "
                                 "made copies of them, resets the cache)")
            if token.size(0) > rt.cache_batch:
                raise ValueError(f"batch {token.size(0)} exceeds the {rt.cache_batch} sequences of "
                                 "the last prefill; decode needs every sequence prefilled to the "
                                 "same position")
            if rt.cache_length >= self.config.block_size:
                raise ValueError(f"the KV cache is full (block_size = {self.config.block_size} "
                                 "tokens); re-prefill a cropped window (generate() does this)")
            logits = self.decode_step(token)
            return logits.clone() if rt.forms.reuses_buffers else logits

    @torch.no_grad()
    def decode_step(self, token: torch.Tensor) -> torch.Tensor:
        """decode_one_token without the argument checks, for a generation loop's own tokens:
        logits (B, V), on workspace phases a view valid until the next call on the model (hold
        `model.lock` while using it from several threads)."""
        with self.lock:
            return self.phase.decode(self, token)

    @torch.no_grad()
    def decode_greedy_step(self, token: torch.Tensor) -> torch.Tensor:
        """decode_step and its argmax: the next token ids (B, 1), unchecked like decode_step.
        With fused decode both happen in one C++ call and the ids are a workspace view."""
        with self.lock:
            return self.phase.decode_greedy(self, token)

    @torch.no_grad()
    def verify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run tokens (B, T) through the KV cache at positions cache_length.. in one call and
        return the logits of every one of them (B, T, V): speculative decoding scores its drafted
        tokens so. A prefill-shaped forward at an offset (the phase's forward, or with
        fused_prefill the fused step on T tokens); on an empty cache, a prefill that keeps
        every position."""
        if not self.phase.opt.kv_cache:
            raise ValueError("verify needs a phase with kv_cache=True")
        self.check_idx(tokens, max_len=self.config.block_size)
        B, T = tokens.shape
        with self.lock:
            rt = self.phase
            rt.refresh(self)
            if rt.kv_caches is None:
                rt.setup_caches(self, max_batch=B)
            start = rt.cache_length
            if B > rt.kv_caches[0].max_batch or (start > 0 and B != rt.cache_batch):
                raise ValueError(f"verify: batch {B} is not the cache's ({rt.cache_batch} "
                                 f"sequences filled, room for {rt.kv_caches[0].max_batch})")
            if start + T > self.config.block_size:
                raise ValueError(f"verify: {T} tokens after the {start} the KV cache holds "
                                 f"exceed block_size = {self.config.block_size}")
            rt.epoch += 1
            logits = rt.forms.prefill(self, tokens, start, False)
            rt.cache_length, rt.cache_batch = start + T, B
            return logits.clone() if rt.forms.reuses_buffers else logits

    def rewind(self, length: int) -> None:
        """Keep the first `length` positions of the KV cache (0 <= length <= what it holds): the
        later ones are dropped, the next call writes over them (speculative decoding's rollback
        of rejected draft tokens)."""
        with self.lock:
            rt = self.phase
            if (not isinstance(length, int) or isinstance(length, bool)
                    or not 0 <= length <= rt.cache_length):
                raise ValueError(f"rewind: length must be an int in [0, {rt.cache_length}] "
                                 f"(the positions the KV cache holds), got {length!r}")
            rt.cache_length = length
            rt.epoch += 1

    # ---- generation ---------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=0.0, top_k=None, generator=None):
        """(B, T + max_new_tokens): the prompt followed by the generated tokens."""
        return generation.generate(self, idx, max_new_tokens, temperature, top_k, generator)

    def generate_stream(self, idx, max_new_tokens, temperature=0.0, top_k=None, generator=None):
        """Yield the generated tokens one step at a time, each (B, 1)."""
        return generation.generate_stream(self, idx, max_new_tokens, temperature, top_k, generator)

    def generate_chunks(self, idx, max_new_tokens, temperature=0.0, top_k=None, generator=None):
        """Yield the generated tokens as each call computes them, (B, k): k = 1 per step, or
        greedy with fused decode every step the KV cache holds, in one C++ call."""
        return generation.generate_chunks(self, idx, max_new_tokens, temperature, top_k, generator)

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


def _tie_lm_head(model, incompatible_keys) -> None:
    """After load_state_dict(..., assign=True), which puts a Parameter of its own under each
    key: the lm head is the token embedding again (GPT-2 ties them) when the two hold the same
    values; differing values stay untied (the fused decode step then refuses the model)."""
    wte, head = model.transformer.wte, model.lm_head
    if head.weight is not wte.weight and torch.equal(head.weight, wte.weight):
        head.weight = wte.weight
