"""Our model as a GGUF file for llama.cpp's `gpt2` architecture (the llama.cpp peers of
`smallmind peers`), written with gguf-py's GGUFWriter.

The tensors are the ones llama.cpp's own converter writes for a Hugging Face GPT-2
(convert_hf_to_gguf.py, GPT2Model): token_embd, position_embd, and per block attn_norm,
attn_qkv, attn_output, ffn_norm, ffn_up, ffn_down, then output_norm; our linear weights are
already (out, in), which is what that converter gets after transposing HF's Conv1D weights.
The lm head is tied to the token embedding, so no `output` tensor is written (llama.cpp's gpt2
loader then reads token_embd for it), unless a model's lm head is not tied.

Types (FILE_TYPES): "f32" keeps every tensor float32; "q8_0" and "q4_0" quantize every matrix
but the position embedding with gguf-py's quantizer (gguf.quants.quantize: blocks of 32 weights
along a row, one float16 scale per block; q8_0 int8 values, q4_0 4-bit ones), as a `pure`
llama-quantize would (its default mix would keep the tied embedding at q6_K); the norms, the
biases and the position embedding stay float32, as llama.cpp's converter keeps them.

The vocabulary is the byte-level BPE of smallmind_torch/assets/tokenizer.json (tokenizer.ggml
model "gpt2", pre-tokenizer "gpt-2", its merges): the engine feeds token ids, so the vocabulary
only has to load. A model whose vocab is not 512 gets the first vocab_size tokens (and the
merges between them), or extra tokens `<extraN>` beyond 512 (GPT-2 small's 50257): every token is
spelled in the byte-level alphabet, which llama.cpp decodes each token with as it loads.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

FILE_TYPES = ("f32", "q8_0", "q4_0")
CONTROL = 3  # gguf TokenType.CONTROL (the special <|endoftext|>); 1 = NORMAL


def vocabulary(vocab_size: int) -> tuple:
    """(tokens, token_types, merges) for a model of `vocab_size` tokens (module docstring)."""
    from ...train.tokenizer import DEFAULT_PATH

    data = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    by_id = {i: piece for piece, i in data["model"]["vocab"].items()}
    specials = {t["content"] for t in data["added_tokens"]}
    tokens = [by_id[i] if i in by_id else f"<extra{i}>" for i in range(vocab_size)]
    types = [CONTROL if t in specials else 1 for t in tokens]
    known = set(tokens)
    merges = []
    for merge in data["model"]["merges"]:
        a, b = merge if isinstance(merge, list) else merge.split(" ", 1)
        if a in known and b in known:  # a + b may be cut off: llama.cpp then keeps a and b
            merges.append(f"{a} {b}")
    if not merges:  # llama.cpp requires the key, and gguf-py writes no empty array
        first = tokens[-1]
        merges.append(f"{first} {first}")
    return tokens, types, merges


def gguf_tensors(model) -> list:
    """(gguf name, float32 numpy array, quantizable) for every tensor llama.cpp's gpt2 reads."""
    import gguf

    names = gguf.TENSOR_NAMES
    T = gguf.MODEL_TENSOR
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    out = [(f"{names[T.TOKEN_EMBD]}.weight", sd["transformer.wte.weight"], True),
           (f"{names[T.POS_EMBD]}.weight", sd["transformer.wpe.weight"], False)]
    per_block = [(T.ATTN_NORM, "ln_1"), (T.ATTN_QKV, "attn.c_attn"), (T.ATTN_OUT, "attn.c_proj"),
                 (T.FFN_NORM, "ln_2"), (T.FFN_UP, "mlp.c_fc"), (T.FFN_DOWN, "mlp.c_proj")]
    for i in range(model.config.n_layer):
        for tensor, ours in per_block:
            for kind in ("weight", "bias"):
                value = sd[f"transformer.h.{i}.{ours}.{kind}"]
                out.append((f"{names[tensor].format(bid=i)}.{kind}", value, value.ndim == 2))
    out += [(f"{names[T.OUTPUT_NORM]}.{kind}", sd[f"transformer.ln_f.{kind}"], False)
            for kind in ("weight", "bias")]
    if model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr():
        out.append((f"{names[T.OUTPUT]}.weight", sd["lm_head.weight"], True))
    return out


def write_gguf(model, path: "str | Path", file_type: str = "f32") -> Path:
    """`model` (a GPT) as a GGUF file of `file_type` (FILE_TYPES) at `path`, written to a
    temporary name first (a reader never sees half a file)."""
    if file_type not in FILE_TYPES:
        raise ValueError(f"unknown GGUF file type {file_type!r}; choose from: {', '.join(FILE_TYPES)}")
    import gguf
    import numpy as np

    qtype = {"f32": None, "q8_0": gguf.GGMLQuantizationType.Q8_0,
             "q4_0": gguf.GGMLQuantizationType.Q4_0}[file_type]
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
             "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[file_type]
    c = model.config
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.gguf")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2])
    writer.add_name("smallmind")
    writer.add_block_count(c.n_layer)
    writer.add_context_length(c.block_size)
    writer.add_embedding_length(c.n_embd)
    writer.add_feed_forward_length(4 * c.n_embd)
    writer.add_head_count(c.n_head)
    writer.add_layer_norm_eps(c.layer_norm_epsilon)
    writer.add_file_type(ftype)
    tokens, types, merges = vocabulary(c.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    for name, value, quantizable in gguf_tensors(model):
        value = np.ascontiguousarray(value, dtype=np.float32)
        if qtype is not None and quantizable:
            writer.add_tensor(name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
    return path
