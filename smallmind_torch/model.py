"""The reference GPT (GPT-2 architecture), nanoGPT style, with phase switches.

The modules below are the readable reference. Each step that a STUDY.md switch covers
(LayerNorm, the linear layers' matmul, attention scores / softmax / values) goes through
the form that `self.opt` selects (forms.py, attention.py). The preallocated-buffer
inference forward lives beside this file in workspace.py, and the KV cache in kv_cache.py,
so that a reader can diff the reference against the fast paths.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from . import generation, workspace
from .attention import causal_attention
from .config import MAX_BY_DEVICE, ModelConfig, OptConfig, resolve_phase
from .forms import embedding, layer_norm, linear
from .kv_cache import KVCache
from .labels import region


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.n_head = config.n_head
        self.n_embd = config.n_embd

    def forward(self, x, opt, future_mask, start=0, kv_cache=None):
        B, T, C = x.size()
        q, k, v = linear(opt, x, self.c_attn).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if kv_cache is not None:
            with region("kv_cache"):
                k, v = kv_cache.update(start, k, v)  # (B, nh, start + T, hs)
        y = causal_attention(opt, q, k, v, start, future_mask)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return linear(opt, y, self.c_proj)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x, opt):
        return linear(opt, F.gelu(linear(opt, x, self.c_fc), approximate="tanh"), self.c_proj)


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, opt, future_mask, start=0, kv_cache=None):
        x = x + self.attn(layer_norm(opt, x, self.ln_1), opt, future_mask, start, kv_cache)
        return x + self.mlp(layer_norm(opt, x, self.ln_2), opt)


class GPT(nn.Module):
    def __init__(self, config: ModelConfig = ModelConfig(), phase: "str | OptConfig" = "reference"):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"GPT needs a ModelConfig, got {type(config).__name__}")
        self.config = config
        opt = resolve_phase(phase)
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
        self.kv_caches: "nn.ModuleList | None" = None
        self.cache_lengths: list[int] = []
        self._workspace: "workspace.Workspace | None" = None
        self._warned_workspace_grad = False
        self.set_phase(opt)

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
        """Switch every form in place. Parameters are untouched; KV caches and the workspace
        belong to the previous phase and are dropped (a safe reset). The `init` switch acts
        at construction only: pass `phase=` to GPT(...) to build with fast init."""
        if phase == "max":  # the first of this device's fastest combinations it can run
            *faster, fallback = MAX_BY_DEVICE.get(self.transformer.wte.weight.device.type,
                                                  MAX_BY_DEVICE["cuda"])
            opt = next((o for o in faster if self._custom_ops_usable(o)), fallback)
        else:
            opt = resolve_phase(phase)
            self._custom_ops_usable(opt, phase_name=phase)
        self.opt = opt
        self.reset_caches()
        return self

    def _custom_ops_usable(self, opt, phase_name=None) -> bool:
        """True if opt's custom forms (if any) can run here; with phase_name, raise instead."""
        if not opt.needs_custom_ops:
            return True
        from . import ops

        device = self.transformer.wte.weight.device
        try:
            if device.type != "cpu":
                raise ops.CustomOpsUnavailable(f"the custom ops have CPU kernels only, the "
                                               f"model is on {device}")
            ops.load_all()
        except ops.CustomOpsUnavailable as exc:
            if phase_name is None:
                return False
            raise ops.CustomOpsUnavailable(
                f"phase {phase_name!r} uses custom ops, which are unavailable: {exc}") from exc
        return True

    def reset_caches(self) -> None:
        self.kv_caches = None
        self.cache_lengths = []
        self._workspace = None

    # ---- forward ----------------------------------------------------------------------------

    def _check_idx(self, idx, *, max_len):
        if not isinstance(idx, torch.Tensor) or idx.dtype != torch.long or idx.dim() != 2:
            raise ValueError(f"idx must be a LongTensor of shape (B, T); got "
                             f"{getattr(idx, 'dtype', type(idx).__name__)} {tuple(getattr(idx, 'shape', ()))}")
        B, T = idx.shape
        if B < 1 or T < 1:
            raise ValueError(f"idx must have B >= 1 and T >= 1; got shape {tuple(idx.shape)}")
        if max_len is not None and T > max_len:
            raise ValueError(f"sequence length {T} exceeds {max_len} (block_size is "
                             f"{self.config.block_size}); crop the prompt or use generate(), which crops")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size - 1}]; got min {lo}, max {hi}")

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab_size) of a full forward from position 0 (no KV cache)."""
        self._check_idx(idx, max_len=self.config.block_size)
        if self._workspace_active():
            return self._forward_into(idx, start=0, last_only=False, use_cache=False).clone()
        return self._forward(idx, start=0, last_only=False, use_cache=False)

    def _workspace_active(self) -> bool:
        if not self.opt.workspace:
            return False
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            if not self._warned_workspace_grad:
                warnings.warn("workspace=True applies to inference only (torch.no_grad / "
                              "inference_mode); this forward records autograd, so it uses the "
                              "allocating path", stacklevel=3)
                self._warned_workspace_grad = True
            return False
        return True

    def _forward(self, idx, start, last_only, use_cache):
        """Allocating forward (autograd-capable) of tokens at positions start..start+T-1."""
        B, T = idx.size()
        opt = self.opt
        tok_emb = embedding(opt, idx, self.transformer.wte.weight)  # (B, T, C)
        pos_emb = self.transformer.wpe.weight[start:start + T]  # (T, C)
        x = tok_emb + pos_emb
        for i, block in enumerate(self.transformer.h):
            kv_cache = self.kv_caches[i] if use_cache else None
            x = block(x, opt, self.future_mask, start, kv_cache)
        x = layer_norm(opt, x, self.transformer.ln_f)
        if last_only:  # generation needs only the next token's logits
            x = x[:, -1:, :]  # (B, 1, C)
        return linear(opt, x, self.lm_head)  # (B, T or 1, vocab_size)

    def _forward_into(self, idx, start, last_only, use_cache):
        """Workspace forward: the same computation, every intermediate in a reused buffer.
        The result is a view of the workspace, valid until the next call."""
        param = self.transformer.wte.weight
        ws = self._workspace
        if ws is None or ws.device != param.device or ws.dtype != param.dtype:
            ws = self._workspace = workspace.Workspace(dtype=param.dtype, device=param.device)
        if use_cache and self.opt.fused_decode and idx.size(1) == 1:  # one C++ op per block
            return workspace.fused_decode_forward(self, ws, idx, start)
        return workspace.workspace_forward(self, ws, idx, start, last_only, use_cache)

    def _forward_any(self, idx, start, last_only, use_cache):
        if self._workspace_active():
            return self._forward_into(idx, start, last_only, use_cache)
        return self._forward(idx, start, last_only, use_cache)

    def setup_workspace(self, max_batch: int = 1) -> "workspace.Workspace":
        """Size every workspace buffer for (max_batch, block_size) with one dry forward."""
        if not self.opt.workspace:
            raise ValueError("setup_workspace needs a phase with workspace=True; "
                             f"the current OptConfig has workspace=False")
        idx = torch.zeros(max_batch, self.config.block_size, dtype=torch.long,
                          device=self.transformer.wte.weight.device)
        with torch.no_grad():
            self._forward_into(idx, start=0, last_only=False, use_cache=False)
        return self._workspace

    # ---- KV cache: prefill once, then one token per step ---------------------------------

    def setup_caches(self, max_batch: int = 1) -> None:
        """Allocate each layer's K and V buffers once, for up to max_batch sequences."""
        if not self.opt.kv_cache:
            raise ValueError("setup_caches needs a phase with kv_cache=True")
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
        c, param = self.config, self.transformer.wte.weight
        self.kv_caches = nn.ModuleList([
            KVCache(max_batch, c.n_head, c.block_size, c.head_dim, dtype=param.dtype, device=param.device)
            for _ in range(c.n_layer)])
        self.cache_lengths = [0] * max_batch

    @torch.no_grad()
    def prefill(self, idx: torch.Tensor) -> torch.Tensor:
        """Run the prompt (B, T <= block_size) into the cache; return next-token logits (B, V)."""
        if not self.opt.kv_cache:
            raise ValueError("prefill needs a phase with kv_cache=True")
        self._check_idx(idx, max_len=self.config.block_size)
        B, T = idx.shape
        if self.kv_caches is None:
            self.setup_caches(max_batch=B)
        if B > self.kv_caches[0].max_batch:
            raise ValueError(f"batch {B} exceeds the KV cache's max_batch "
                             f"{self.kv_caches[0].max_batch}; call setup_caches(max_batch={B})")
        logits = self._forward_any(idx, start=0, last_only=True, use_cache=True)
        self.cache_lengths[:B] = [T] * B
        return logits[:, -1, :]

    @torch.no_grad()
    def decode_one_token(self, token: torch.Tensor) -> torch.Tensor:
        """Append one token per sequence (B, 1) after what the cache holds; logits (B, V)."""
        if self.kv_caches is None:
            raise ValueError("decode_one_token needs a filled KV cache: call prefill first "
                             "(switching phase resets the cache)")
        if not isinstance(token, torch.Tensor) or token.dim() != 2 or token.size(1) != 1:
            raise ValueError(f"token must have shape (B, 1); got {tuple(getattr(token, 'shape', ()))}")
        self._check_idx(token, max_len=1)
        B = token.size(0)
        if B > len(self.cache_lengths):
            raise ValueError(f"batch {B} exceeds the KV cache's max_batch {len(self.cache_lengths)}")
        positions = set(self.cache_lengths[:B])
        if len(positions) != 1 or 0 in positions:
            raise ValueError(f"sequences 0..{B - 1} are at cache positions {self.cache_lengths[:B]}; "
                             "decode needs all of them prefilled to the same position")
        if self.cache_lengths[0] >= self.config.block_size:
            raise ValueError(f"the KV cache is full (block_size = {self.config.block_size} tokens); "
                             "re-prefill a cropped window (generate() does this)")
        return self._decode_step(token)

    def _decode_step(self, token):
        """decode_one_token without the checks, for generation's own (valid) tokens."""
        B, start = token.size(0), self.cache_lengths[0]
        logits = self._forward_any(token, start=start, last_only=True, use_cache=True)
        self.cache_lengths[:B] = [start + 1] * B
        return logits[:, -1, :]

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
