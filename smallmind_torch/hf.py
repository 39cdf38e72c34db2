"""Weights to and from Hugging Face transformers' GPT2LMHeadModel, and nanoGPT's layout.

Hugging Face stores the linear layers of a block as Conv1D, weight (in, out); nanoGPT and
this model use nn.Linear, weight (out, in). Everything else has the same names.
"""
from __future__ import annotations

import re

import torch

from .config import ModelConfig

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_IGNORED = re.compile(r".*\.attn\.(bias|masked_bias)$")  # old HF versions' mask buffers


def _config_from_state_dict(sd, n_head, layer_norm_epsilon=1e-5):
    if n_head is None:
        raise ValueError("a bare state_dict does not say n_head: pass GPT.from_hf(state_dict, n_head=...)")
    vocab_size, n_embd = sd["transformer.wte.weight"].shape
    block_size = sd["transformer.wpe.weight"].shape[0]
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"transformer\.h\.(\d+)\.", k))}
    return ModelConfig(n_layer=len(layers), n_head=n_head, n_embd=n_embd, vocab_size=vocab_size,
                       block_size=block_size, layer_norm_epsilon=layer_norm_epsilon)


# GPT2Config fields that change what the model computes, with the value this model implements
# (layer_norm_epsilon, n_positions, vocab_size, n_embd, n_layer, n_head become the ModelConfig;
# n_inner is checked below, tie_word_embeddings in the weights). reorder_and_upcast_attn
# only reorders the scaling and upcasts to float32, which a float32 model computes in anyway.
_MATH = {"activation_function": ("gelu_new", "gelu_pytorch_tanh"),
         "scale_attn_weights": (True,), "scale_attn_by_inverse_layer_idx": (False,),
         "add_cross_attention": (False,), "is_encoder_decoder": (False,)}


def unsupported_config(hf_config) -> "str | None":
    """Why a transformers GPT2Config describes math this model does not compute (None: it
    computes the same)."""
    for name, allowed in _MATH.items():
        value = getattr(hf_config, name, allowed[0])
        if value not in allowed:
            return (f"{name}={value!r} is not implemented here (this model computes "
                    f"{name}={allowed[0]!r}, GPT-2's)")
    n_inner, n_embd = getattr(hf_config, "n_inner", None), getattr(hf_config, "n_embd", None)
    if n_inner is not None and n_inner != 4 * n_embd:
        return f"n_inner={n_inner!r} is not implemented here (the MLP is 4 x n_embd = {4 * n_embd})"
    eps = getattr(hf_config, "layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0:
        return f"layer_norm_epsilon={eps!r} must be a number >= 0"
    return None


def from_hf(cls, model_or_state_dict, n_head=None, phase="reference"):
    eps = 1e-5
    if isinstance(model_or_state_dict, dict):
        sd = dict(model_or_state_dict)
    elif hasattr(model_or_state_dict, "state_dict") and hasattr(model_or_state_dict, "config"):
        hf_config = model_or_state_dict.config
        problem = unsupported_config(hf_config)
        if problem:
            raise ValueError(f"cannot import this GPT-2 model: {problem}")
        n_head, eps = hf_config.n_head, hf_config.layer_norm_epsilon
        sd = model_or_state_dict.state_dict()
    else:
        raise TypeError("from_hf takes a GPT2LMHeadModel or a state_dict, got "
                        f"{type(model_or_state_dict).__name__}")
    sd = {k.removeprefix("_orig_mod."): v for k, v in sd.items() if not _IGNORED.match(k)}
    if "transformer.wte.weight" not in sd:
        raise ValueError("not a GPT-2 state_dict: no 'transformer.wte.weight' key")
    config = _config_from_state_dict(sd, n_head, eps)
    C = config.n_embd
    # Conv1D weights are (in, out): c_attn is (C, 3C) in HF, (3C, C) in nanoGPT.
    hf_layout = sd["transformer.h.0.attn.c_attn.weight"].shape == (C, 3 * C)
    model = cls(config, phase=phase)
    own = model.state_dict()
    converted = {}
    for key, value in sd.items():
        if key not in own:
            raise ValueError(f"unexpected key {key!r} in the GPT-2 state_dict")
        if hf_layout and key.endswith(_CONV1D):
            value = value.t()
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(f"{key}: shape {tuple(value.shape)} does not fit {tuple(own[key].shape)}")
        converted[key] = value
    if "lm_head.weight" not in converted:
        converted["lm_head.weight"] = converted["transformer.wte.weight"]
    if not torch.equal(converted["lm_head.weight"], converted["transformer.wte.weight"]):
        raise ValueError("lm_head.weight differs from transformer.wte.weight; this model ties them")
    missing = set(own) - set(converted)
    if missing:
        raise ValueError(f"the state_dict lacks {sorted(missing)}")
    model.load_state_dict(converted)
    return model


def to_hf(model):
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as exc:
        raise ImportError("to_hf needs transformers: pip install 'smallmind-torch[hf]'") from exc
    c = model.config
    hf_config = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                           n_layer=c.n_layer, n_head=c.n_head, activation_function="gelu_new",
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                           layer_norm_epsilon=c.layer_norm_epsilon,
                           bos_token_id=0, eos_token_id=0, pad_token_id=0)
    hf = GPT2LMHeadModel(hf_config)
    sd = {k: (v.t() if k.endswith(_CONV1D) else v) for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not _IGNORED.match(k)]
    if missing or unexpected:
        raise RuntimeError(f"to_hf: missing {missing}, unexpected {unexpected}")
    return hf.eval()
