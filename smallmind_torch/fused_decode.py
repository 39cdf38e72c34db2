"""Fused decode (beyond the seed): a KV-cache decode step of the whole model in one C++ op.

The unit in one file, read top to bottom:
- `BLOCK_PARAMS` / `block_params(block)`: the one place that maps a Block's modules to the
  ops' parameter lists (the ops take them as one `Tensor[]`), and `Q8_PARAMS`, the matrices
  `decode_step_q8_` takes as int8;
- `decode_block_reference`: one block (the `decode_block_` op) in plain PyTorch, and
  `decode_step_reference`: the whole step (the `decode_step_`, `decode_step_q8_` and
  `decode_step_q4_` ops:
  embeddings, every block, ln_f, the tied lm head, the argmax), both in the same step order and
  with the same names as `csrc/decode_kernel.h`;
- `FusedStep`: the model's decode step on the op, what the `fused_decode` switch selects for
  one new token per sequence (and `fused_prefill` for a prompt's prefill and a verify, T tokens
  per sequence): every argument but the token and its position gathered once
  (on int8 weights, the phase's QuantizedWeights, for "w8a8" with int8 activations too; on int4
  weights its Int4Weights), so
  that a step looks nothing up; logits and, for greedy generation, the next token ids, views of
  the phase's workspace.

Why: a decode step through the module path is ~150 small op calls, each paying the dispatcher
and Python, and each matrix-vector product forks and joins the threads; one C++ call per step
pays that once and runs the whole step in one parallel region.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import ops
from .decode_layout import BLOCK_PARAMS, Q8_PARAMS
from .forms import linear_int4_torch, linear_int8_torch, linear_w8a8_torch
from .weight_formats import Int4Weight, QuantizedWeight
from .labels import region

# The profiler label of a fused step (labels.CATEGORIES), Python's call or C++'s loop.
STEP_LABEL = "decode_step"

# BLOCK_PARAMS (the ops' parameter order: nanoGPT names, weights in nn.Linear layout (out, in))
# and Q8_PARAMS (the four matrices `decode_step_q8_` takes as int8) are decode_layout.py's table,
# the one the fakes and the C++ unpack read too.
N_PARAMS = len(BLOCK_PARAMS)  # per block


def block_params(block) -> list:
    """The parameters of a model.Block in BLOCK_PARAMS order."""
    return [block.get_parameter(name) for name in BLOCK_PARAMS]


def q8_modules(model) -> list:
    """The linear layers whose weights decode_step_q8_ takes as int8, in its order."""
    return [block.get_submodule(BLOCK_PARAMS[i].rpartition(".")[0])
            for block in model.transformer.h for i in Q8_PARAMS] + [model.lm_head]


def decode_block_reference(x, params, k_cache, v_cache, pos: int, n_head: int, eps: float,
                           linear=F.linear):
    """Plain PyTorch of `decode_block_`: one new token per sequence, x (B, C) updated in place;
    row `pos` of k_cache / v_cache (maxB, nh, S, hs) written for sequences 0..B-1. `linear`:
    what each of the four matrices runs, `linear(h, weight, bias)` (on int8 weights: on a
    QuantizedWeight, the int8 rows of h for int8 activations)."""
    (ln_1_w, ln_1_b, c_attn_w, c_attn_b, attn_c_proj_w, attn_c_proj_b,
     ln_2_w, ln_2_b, c_fc_w, c_fc_b, mlp_c_proj_w, mlp_c_proj_b) = params
    B, C = x.shape
    hs = C // n_head
    # attention
    h = F.layer_norm(x, (C,), ln_1_w, ln_1_b, eps)
    q, k, v = linear(h, c_attn_w, c_attn_b).split(C, dim=1)
    k_cache[:B, :, pos] = k.view(B, n_head, hs)
    v_cache[:B, :, pos] = v.view(B, n_head, hs)
    keys, values = k_cache[:B, :, :pos + 1], v_cache[:B, :, :pos + 1]  # (B, nh, pos + 1, hs)
    att = (q.view(B, n_head, 1, hs) @ keys.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, 1, L)
    y = (torch.softmax(att, dim=-1) @ values).view(B, C)
    x.add_(linear(y, attn_c_proj_w, attn_c_proj_b))
    # MLP
    h = F.layer_norm(x, (C,), ln_2_w, ln_2_b, eps)
    fc = F.gelu(linear(h, c_fc_w, c_fc_b), approximate="tanh")
    x.add_(linear(fc, mlp_c_proj_w, mlp_c_proj_b))
    return x


def decode_step_reference(tokens, pos: int, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches,
                          v_caches, n_head: int, eps: float, logits, next_tokens,
                          weights_q8=None, scales_q8=None, int8_activations: bool = False, *,
                          weights_q4=None, scales_q4=None, group_size: int = 32):
    """Plain PyTorch of `decode_step_`: tokens (B,) or (B, T) at positions pos .. pos + T - 1;
    block_params 12 tensors per block (BLOCK_PARAMS order, block after block); one k and one v
    cache per block, rows pos .. pos + T - 1 written; logits (B, T, V) (every token's) or
    (B, 1, V) (the last's; (B, V) too for T = 1) and next_tokens (one per row of logits)
    written in place. Returns (logits, next_tokens). The T tokens go through one after the
    other, each a one-token step at its position: the kernel's causal rows, by definition.
    With weights_q8 / scales_q8, `decode_step_q8_`: the four
    weight matrices of each block and the lm head are the dequantized int8 ones, and with
    int8_activations their input rows are quantized too (w8a8). With weights_q4 / scales_q4,
    `decode_step_q4_`: the same matrices as Int4Weights of `group_size`, their input rows
    quantized to int8 (forms.linear_int4_torch)."""
    B, C = tokens.size(0), wte.size(1)
    tokens = tokens.reshape(B, -1)
    T = tokens.size(1)
    linear, head = F.linear, wte  # the lm head is tied to the token embedding
    quantized = None
    if weights_q8 is not None:
        quantized = [QuantizedWeight(w_q, scale) for w_q, scale in zip(weights_q8, scales_q8)]
        linear = linear_w8a8_torch if int8_activations else linear_int8_torch  # the naive forms
    elif weights_q4 is not None:
        quantized = [Int4Weight(w, s, group_size) for w, s in zip(weights_q4, scales_q4)]
        linear = linear_int4_torch
    if quantized is not None:
        block_params = list(block_params)
        for l in range(len(k_caches)):
            for m, i in enumerate(Q8_PARAMS):
                block_params[N_PARAMS * l + i] = quantized[len(Q8_PARAMS) * l + m]
        head = quantized[-1]
    rows = logits.view(B, -1, logits.size(-1))  # (B, T or 1, V)
    for t in range(T):
        x = wte[tokens[:, t]] + wpe[pos + t]  # (B, C)
        for l, (k_cache, v_cache) in enumerate(zip(k_caches, v_caches)):  # every block
            decode_block_reference(x, block_params[N_PARAMS * l:N_PARAMS * (l + 1)], k_cache,
                                   v_cache, pos + t, n_head, eps, linear)
        if rows.size(1) == T or t == T - 1:
            h = F.layer_norm(x, (C,), ln_f_w, ln_f_b, eps)
            rows[:, t if rows.size(1) == T else 0].copy_(linear(h, head, None))
    next_tokens.view(rows.shape[:2]).copy_(rows.argmax(dim=-1))
    return logits, next_tokens


class FusedStep:
    """A phase's fused decode step, ready to call: the op (`decode_step_`, on int8 weights
    `decode_step_q8_`, on int4 ones `decode_step_q4_`) on a `torch.classes.smallmind.DecodeModel`
    holding every argument but the tokens, their position and the outputs, made once when the
    phase's KV caches are set up (runtime.PhaseRuntime.setup_caches). `fmt`: the `weights`
    switch; for "int8", "w8a8" and "int4", `prepared` maps each linear layer to its
    QuantizedWeight or Int4Weight. A call returns (logits (B, 1, V), next token ids (B, 1)),
    views of the workspace valid until the next call.

    Why an object held in C++: a Python call of the op converts each of its ~60 tensors through
    the dispatcher's schema, about a tenth of a step at the seed shape; the held model's
    `step` takes four arguments (experiments/python_per_token.py measures both)."""

    def __init__(self, model, kv_caches, workspace, fmt: str = "fp32", prepared=None):
        ops.load_all()  # the C++ ops registered (a phase with fused_decode has built them)
        tr, c = model.transformer, model.config
        if model.lm_head.weight is not tr.wte.weight:
            raise ValueError("fused decode needs the lm head tied to the token embedding "
                             "(model.lm_head.weight is model.transformer.wte.weight)")
        flat = [p for block in tr.h for p in block_params(block)]
        # the op's arguments (what decode_step_reference takes to check a step against)
        self.args = (tr.wte.weight, tr.wpe.weight, flat, tr.ln_f.weight, tr.ln_f.bias,
                     [cache.k_cache for cache in kv_caches], [cache.v_cache for cache in kv_caches],
                     c.n_head, c.layer_norm_epsilon)
        quantized = [] if fmt == "fp32" else [prepared[module] for module in q8_modules(model)]
        if fmt == "fp32":
            self.int8_args, lowp, group_size = (), ([], []), 0
        elif fmt == "int4":
            groups = {w.group_size for w in quantized}
            if len(groups) != 1:
                raise ValueError(f"fused decode on int4 weights needs one group size for every "
                                 f"matrix, got {sorted(groups)}")
            group_size = groups.pop()
            lowp = ([w.packed for w in quantized], [w.scales for w in quantized])
            self.int8_args = (*lowp, group_size)
        else:  # int8 or w8a8: the same int8 weights, int8 activations for w8a8
            lowp, group_size = ([w.w_q for w in quantized], [w.scale for w in quantized]), 0
            self.int8_args = (*lowp, fmt == "w8a8")
        self.model = torch.classes.smallmind.DecodeModel(*self.args, fmt, *lowp, group_size)
        self.step_op = self.model.step  # the held op's bound method, looked up once
        self.workspace, self.vocab = workspace, c.vocab_size
        self.batch, self.logits, self.next_tokens = 0, None, None

    def _outputs(self, B: int):
        """The (B, 1, V) logits and (B, 1) next token ids, views of the workspace."""
        if B != self.batch:  # views of the workspace's buffers for this batch size
            self.logits = self.workspace.take("logits", B, 1, self.vocab)
            self.next_tokens = self.workspace.take("next_token", B, 1, dtype=torch.int64)
            self.batch = B
        return self.logits, self.next_tokens

    def __call__(self, tokens, start: int, last_only: bool = True):
        """tokens (B, T) per sequence at positions start .. start + T - 1, through the KV cache:
        T = 1 the decode step; T > 1 a prefill (last_only: the logits of each sequence's last
        token, (B, 1, V)) or a verify (every token's, (B, T, V)); and their argmax ids."""
        B, T = tokens.shape
        if T == 1 or last_only:
            logits, next_tokens = self._outputs(B)
        else:  # a verify: every row's logits
            logits = self.workspace.take("verify_logits", B, T, self.vocab)
            next_tokens = self.workspace.take("verify_next_tokens", B, T, dtype=torch.int64)
        with region(STEP_LABEL):  # one fused step, of 1 or T tokens
            self.step_op(tokens, start, logits, next_tokens)
        return logits, next_tokens

    def generate_greedy(self, tokens, first: int, count: int, start: int) -> None:
        """`count` greedy decode steps in one C++ call, no Python between them: step i reads
        tokens[:, first + i - 1] at position start + i and writes its argmax to
        tokens[:, first + i] (tokens: the run's (B, N) int64 buffer). Each step is labelled
        STEP_LABEL for the profiler, as a call of this step is."""
        logits, next_tokens = self._outputs(tokens.size(0))
        self.model.generate_greedy(tokens, first, count, start, logits, next_tokens, STEP_LABEL)
