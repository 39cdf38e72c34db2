"""torch.compile as a form (beyond the seed): what a user would compile instead of writing ops.

The `compile` switch compiles, gpt-fast style:
- the forward (prefill, or a no-cache step's full forward) through the reference modules, with
  dynamic shapes, since the prompt length varies;
- the decode step over the static KV cache, written with static shapes (`static_decode`): the
  new token's k and v go to their position by index (`index_copy_` with a position tensor)
  rather than by slicing with a Python int, and attention reads the whole cache under a mask
  of the positions filled so far. One graph then serves every position: no recompilation per
  token (the study counts compiled graphs before and after its timed runs).
The forms inside are the phase's own (the `compiled` preset uses the reference forms).

The forms of the switch, as torch.compile is deployed:
- "inductor" / "max-autotune": Inductor's Python wrapper around its generated C++ kernels;
- "cpp-wrapper": the same kernels called from a generated C++ wrapper
  (torch._inductor.config.cpp_wrapper), which saves the Python of the wrapper on every call;
- "aot-inductor": the decode step exported (torch.export) and compiled ahead of time into an
  AOTInductor package (`torch._inductor.aoti_compile_and_package`), loaded and called with no
  Dynamo guard and no Python wrapper; the prefill is compiled as "inductor". The package holds
  the weights as constants, so it is made again when a parameter changes (the runtime's
  refresh), and it takes the KV caches as inputs, which it writes in place.

Not a form, a pitfall: Inductor's `freezing` option folds every tensor the graph reads as an
attribute into a constant at compile time, the KV cache included, so a frozen decode step
reads the cache as it was when it compiled (tests/test_compiled.py shows its tokens differ).
Here the caches reach the AOT package as inputs for that reason.
"""
from __future__ import annotations

import os
import tempfile
import warnings

import torch
import torch.nn.functional as F

# compile form -> torch.compile's mode, or its Inductor options (torch.compile takes one or the
# other); "aot-inductor" compiles its prefill as "inductor"
MODES = {"inductor": "default", "max-autotune": "max-autotune", "aot-inductor": "default"}
OPTIONS = {"cpp-wrapper": {"cpp_wrapper": True}}
# the forms as torch.compile is deployed, measured beside the `compiled` preset (the study's
# "compile" part)
DEPLOYED_FORMS = ("cpp-wrapper", "aot-inductor")


def compiled_graphs() -> int:
    """How many graphs torch.compile has produced in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def static_decode(model, token, input_pos, k_caches=None, v_caches=None):
    """One token per sequence, token (B, 1) at the position held in input_pos (1,), through
    the KV cache; logits (B, 1, V). The same steps as GPT.allocating_forward for one token.
    k_caches / v_caches: each layer's (maxB, nh, S, hs) buffers (default: the phase's)."""
    forms, c = model.phase.forms, model.config
    B, nh, hs = token.size(0), c.n_head, c.head_dim
    if k_caches is None:
        k_caches = [cache.k_cache for cache in model.phase.kv_caches]
        v_caches = [cache.v_cache for cache in model.phase.kv_caches]
    x = forms.embedding(token, model.transformer.wte.weight) + model.transformer.wpe(input_pos)
    filled = (model.positions <= input_pos).view(1, -1)  # (1, S): the keys this token attends
    for block, k_cache, v_cache in zip(model.transformer.h, k_caches, v_caches):
        q, k, v = forms.linear(forms.layer_norm(x, block.ln_1), block.attn.c_attn).split(c.n_embd, dim=2)
        q = q.view(B, 1, nh, hs).transpose(1, 2)  # (B, nh, 1, hs)
        keys = k_cache[:B].index_copy_(2, input_pos, k.view(B, 1, nh, hs).transpose(1, 2))
        values = v_cache[:B].index_copy_(2, input_pos, v.view(B, 1, nh, hs).transpose(1, 2))
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=filled)  # (B, nh, 1, hs)
        x = x + forms.linear(y.transpose(1, 2).reshape(B, 1, c.n_embd), block.attn.c_proj)
        x = x + block.mlp(forms.layer_norm(x, block.ln_2), forms)
    return forms.linear(forms.layer_norm(x, model.transformer.ln_f), model.lm_head)


def _compile(fn, mode: str, **kwargs):
    # SMALLMIND_COMPILE_BACKEND=aot_eager captures and checks the graphs without Inductor's
    # code generation (seconds instead of a minute); the tests use it.
    backend = os.environ.get("SMALLMIND_COMPILE_BACKEND", "inductor")
    if backend == "inductor" and mode in OPTIONS:
        return torch.compile(fn, options=OPTIONS[mode], **kwargs)
    if backend == "inductor":
        return torch.compile(fn, mode=MODES[mode], **kwargs)
    return torch.compile(fn, backend=backend, **kwargs)


def compile_forward(forward, mode: str):
    """`forward(model, idx, start, last_only, use_cache)` compiled with dynamic shapes."""
    return _compile(forward, mode, dynamic=True)


def compile_decode(mode: str):
    """The Forms.decode of a compiled phase: static_decode, one graph for every position (and
    models of one shape share it; a new batch size makes the batch dimension dynamic); for
    "aot-inductor", an AOTInductor package of it (AotDecode)."""
    if mode == "aot-inductor":
        return AotDecode()
    step = _compile(static_decode, mode, fullgraph=True)

    def decode(model, token, start):
        model.input_pos.fill_(start)  # a tensor, so the position is data, not a new graph
        # a fresh (B, 1) tensor: a column of generate's token buffer has that buffer's row
        # stride (even at B = 1), which would make each generation length a new graph
        token = token.clone(memory_format=torch.contiguous_format)
        try:
            return step(model, token, model.input_pos)
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            # Dynamo compiles a function at most `recompile_limit` times per process (models
            # of many shapes in one session): go on uncompiled, correct, and say so once.
            warnings.warn("torch.compile's recompile limit for the decode step is reached in "
                          "this process (models of many shapes); running it uncompiled "
                          "(torch._dynamo.reset() clears the cache)", stacklevel=3)
            return static_decode(model, token, model.input_pos)
    return decode



class DecodeStepModule(torch.nn.Module):
    """static_decode as a module to export: the model's weights are its parameters (constants
    of the package), the token, its position and the KV caches its inputs."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, token, input_pos, k_caches, v_caches):
        return static_decode(self.model, token, input_pos, k_caches, v_caches)


class AotDecode:
    """The Forms.decode of compile="aot-inductor": on the first call for a batch size, the decode
    step is exported with that batch and compiled into an AOTInductor package (in a temporary
    directory), then every call runs the loaded package on the phase's caches. Made again with
    the phase's forms (runtime.resolve_forms), so a change of the weights makes a new package.
    With SMALLMIND_COMPILE_BACKEND other than inductor (the tests), the exported program runs
    as it is (`ExportedProgram.module()`): the same graph, without Inductor's code generation."""

    def __init__(self):
        self.runners = {}  # batch size -> the loaded package
        # the position as the package's input: a tensor of its own (the model's input_pos is a
        # buffer of the exported module, which an input must not alias)
        self.input_pos = torch.zeros(1, dtype=torch.long)

    def runner(self, model, token, input_pos, k_caches, v_caches):
        B = token.size(0)
        if B not in self.runners:
            program = torch.export.export(DecodeStepModule(model),
                                          (token, input_pos, k_caches, v_caches))
            if os.environ.get("SMALLMIND_COMPILE_BACKEND", "inductor") == "inductor":
                path = os.path.join(tempfile.mkdtemp(prefix="smallmind-aoti-"), "decode.pt2")
                self.runners[B] = torch._inductor.aoti_load_package(
                    torch._inductor.aoti_compile_and_package(program, package_path=path))
            else:
                self.runners[B] = program.module()
        return self.runners[B]

    def __call__(self, model, token, start):
        self.input_pos.fill_(start)
        token = token.clone(memory_format=torch.contiguous_format)  # as compile_decode's
        k_caches = [cache.k_cache for cache in model.phase.kv_caches]
        v_caches = [cache.v_cache for cache in model.phase.kv_caches]
        run = self.runner(model, token, self.input_pos, k_caches, v_caches)
        return run(token, self.input_pos, k_caches, v_caches)
