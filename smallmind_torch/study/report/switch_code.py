"""What each switch of OptConfig changes in the code: for every switch (config.FORMS), its naive
form on the left and its fast form on the right, as listings taken from the sources by name
(code_view). Where the fast form is a C++ op, the right column is the kernel's own loop from
csrc/, under the line of Python that calls it. Notebook 02 shows them (`show_switches`).

SWITCHES is data: switch -> (title, left, right), each side a tuple of sources, one of
    ("py", path, qualname)                    a Python function or method
    ("cpp", path, name, (path, qualname, s))  a C++ function, noted with the line of the
                                              Python function `qualname` that holds `s`
"""
from __future__ import annotations

from .code_view import Listing, call_line, cpp_listing, python_listing, side_by_side_html

_OPS_CALL = "ops."

SWITCHES: dict = {
    "attention_scores": (
        "1 attention scores: one dot product per (query, key) pair -> one batched matmul",
        (("py", "attention.py", "attention_scores_naive"),),
        (("py", "attention.py", "attention_scores_batched"),)),
    "attention_values": (
        "2 attention values: one sum per (row, dimension) -> one batched matmul",
        (("py", "attention.py", "attention_values_naive"),),
        (("py", "attention.py", "attention_values_batched"),)),
    "workspace": (
        "3a workspace: a forward that allocates every intermediate -> one into buffers made once",
        (("py", "model.py", "GPT.allocating_forward"),),
        (("py", "workspace.py", "workspace_forward"),)),
    "kv_cache": (
        "3b KV cache: every new token runs the whole prefix again -> its keys and values are kept",
        (("py", "model.py", "GPT.forward_last"),),
        (("py", "kv_cache.py", "KVCache.update"),
         ("py", "model.py", "CausalSelfAttention.forward"))),
    "softmax": (
        "4 softmax: three passes, a new tensor each -> one C++ pass per row over its valid keys",
        (("py", "attention.py", "softmax_naive"),),
        (("cpp", "csrc/attention_kernel.h", "causal_softmax_rows",
          ("attention.py", "softmax_into_custom", _OPS_CALL)),)),
    "matmul": (
        "5 matmul: the library's GEMM -> our blocked GEMM (its register-tile micro-kernel)",
        (("py", "forms.py", "linear_torch"),),
        (("cpp", "csrc/gemm_kernel.h", "micro_kernel_full",
          ("forms.py", "linear_custom", _OPS_CALL)),)),
    "layernorm": (
        "6 LayerNorm: composed from mean and variance ops -> one C++ pass per row",
        (("py", "forms.py", "layer_norm_naive"),),
        (("cpp", "csrc/layer_norm_row.h", "row_moments",
          ("forms.py", "layer_norm_custom", _OPS_CALL)),
         ("cpp", "csrc/layer_norm_row.h", "row_normalize", None))),
    "embedding_backward": (
        "7 embedding backward: autograd's index_add -> a sorted, segment-reduced C++ backward",
        (("py", "forms.py", "embedding_torch"),),
        (("cpp", "csrc/embedding.cpp", "embedding_backward_cpu",
          ("forms.py", "embedding_custom", _OPS_CALL)),)),
    "init": (
        "8 init: module by module (per_module=True) -> one pass over the parameters",
        (("py", "model.py", "GPT._initialize"),),
        (("py", "model.py", "GPT._init_parameter"),)),
    "fused_attention": (
        "fused attention (beyond the seed): scores, softmax, values -> one C++ online softmax",
        (("py", "attention.py", "attention_scores_batched"),
         ("py", "attention.py", "softmax_torch"),
         ("py", "attention.py", "attention_values_batched")),
        (("cpp", "csrc/attention_kernel.h", "attend_row",
          ("attention.py", "attention_custom_into", _OPS_CALL)),)),
    "fused_decode": (
        "fused decode (beyond the seed): a block as ~35 module calls -> one C++ step, per layer",
        (("py", "model.py", "Block.forward"),
         ("py", "model.py", "CausalSelfAttention.forward"),
         ("py", "model.py", "MLP.forward")),
        (("cpp", "csrc/decode_kernel.h", "block_layer",
          ("fused_decode.py", "FusedStep.__call__", "self.step_op(")),)),
    "fused_prefill": (
        "fused prefill (beyond the seed): the prompt through the modules -> the decode step's op "
        "on T tokens, rows in order",
        (("py", "workspace.py", "workspace_forward"),),
        (("cpp", "csrc/decode_kernel.h", "attend_rows",
          ("fused_decode.py", "FusedStep.__call__", "self.step_op(")),
         ("cpp", "csrc/decode_kernel.h", "block_layer_gemm", None))),
    "compile": (
        "compile (beyond the seed): the decode step as written -> torch.compile of a static one",
        (("py", "model.py", "GPT.allocating_forward"),),
        (("py", "compiled.py", "static_decode"),
         ("py", "compiled.py", "compile_decode"))),
    "weights": (
        "weights (beyond the seed): fp32 -> int8 per output channel, the int8 kernel's dot rows",
        (("py", "forms.py", "linear_int8_torch"),
         ("py", "weight_formats.py", "quantize_per_channel")),
        (("cpp", "csrc/linear_lowp_kernel.h", "dot_rows",
          ("forms.py", "linear_int8_custom", _OPS_CALL)),)),
}


def listing(source) -> Listing:
    """A SWITCHES source as a Listing."""
    if source[0] == "py":
        return python_listing(source[1], source[2])
    _, path, name, call = source
    note = "" if call is None else (f"called as {call_line(*call).removeprefix('return ')}"
                                    f"  ({call[0]}: {call[1]})")
    return cpp_listing(path, name, note)


def switch_html(switch: str) -> str:
    """The naive and the fast form of one switch side by side, as HTML."""
    title, left, right = SWITCHES[switch]
    return side_by_side_html(title, [listing(s) for s in left], [listing(s) for s in right])


def show_switches(switches=None) -> None:
    """Display every switch's pair (default: all of SWITCHES, in order) in a notebook."""
    from IPython.display import HTML, display

    for switch in switches or SWITCHES:
        display(HTML(switch_html(switch)))
