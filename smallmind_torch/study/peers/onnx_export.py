"""The decode step with past keys and values, as plain PyTorch ops, exported to ONNX from our
own model (for the ONNX Runtime peer of `smallmind peers`).

`DecodeWithPast` computes what `GPT` computes (reference forms: F.layer_norm, one qkv linear,
masked matmul attention, tanh GELU, tied lm head) over explicit inputs and outputs instead of
module state:

    input_ids (B, T) int64, past_k_i / past_v_i (B, n_head, P, head_dim) for every layer i
    -> next_token (B, 1) int64 (greedy: argmax of the last position's logits),
       present_k_i / present_v_i (B, n_head, P + T, head_dim)

One graph serves the prefill (P = 0, T = prompt length) and every decode step (T = 1, P =
tokens so far): the new tokens sit at positions P..P+T-1 and see every past key and the new
keys up to their own position. The greedy argmax is part of the graph, so a generation loop
binds `next_token` of one step as `input_ids` of the next and the presents as the next pasts
(ONNX Runtime's IO binding) without copying anything between steps.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def input_names(n_layer: int) -> list:
    return ["input_ids"] + [f"past_{kv}_{i}" for i in range(n_layer) for kv in "kv"]


def output_names(n_layer: int) -> list:
    return ["next_token"] + [f"present_{kv}_{i}" for i in range(n_layer) for kv in "kv"]


class DecodeWithPast(nn.Module):
    """The model's forward over new tokens after P cached positions, past K/V in and out."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    def _layer_norm(self, x, ln):
        return F.layer_norm(x, (self.config.n_embd,), ln.weight, ln.bias, self.config.layer_norm_epsilon)

    def forward(self, input_ids, past):
        c, tr = self.config, self.model.transformer
        nh, hs = c.n_head, c.head_dim
        B, T = input_ids.shape
        P = past[0].shape[2]
        q_pos = torch.arange(T, device=input_ids.device) + P            # positions of the new tokens
        k_pos = torch.arange(P + T, device=input_ids.device)            # positions of every key
        future = k_pos[None, :] > q_pos[:, None]                        # (T, P + T): masked keys
        x = F.embedding(input_ids, tr.wte.weight) + F.embedding(q_pos, tr.wpe.weight)
        presents = []
        for i, block in enumerate(tr.h):
            attn, mlp = block.attn, block.mlp
            q, k, v = F.linear(self._layer_norm(x, block.ln_1), attn.c_attn.weight,
                               attn.c_attn.bias).split(c.n_embd, dim=2)
            q = q.view(B, T, nh, hs).transpose(1, 2)
            k = torch.cat([past[2 * i], k.view(B, T, nh, hs).transpose(1, 2)], dim=2)
            v = torch.cat([past[2 * i + 1], v.view(B, T, nh, hs).transpose(1, 2)], dim=2)
            presents += [k, v]
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
            att = att.masked_fill(future, float("-inf")).softmax(dim=-1)
            y = (att @ v).transpose(1, 2).reshape(B, T, c.n_embd)
            x = x + F.linear(y, attn.c_proj.weight, attn.c_proj.bias)
            h = F.gelu(F.linear(self._layer_norm(x, block.ln_2), mlp.c_fc.weight, mlp.c_fc.bias),
                       approximate="tanh")
            x = x + F.linear(h, mlp.c_proj.weight, mlp.c_proj.bias)
        x = self._layer_norm(x[:, -1:, :], tr.ln_f)
        logits = F.linear(x, tr.wte.weight)                             # (B, 1, V), tied head
        return (logits.argmax(dim=-1), *presents)


def empty_past(config, batch: int = 1) -> list:
    return [torch.zeros(batch, config.n_head, 0, config.head_dim) for _ in range(2 * config.n_layer)]


def export_decode_step(model, path: "str | Path") -> Path:
    """Export `DecodeWithPast(model)` to an ONNX file at `path` (written under a temporary name,
    then renamed, so a failed export leaves nothing behind). T and P are dynamic."""
    from torch.export import Dim

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    c = model.config
    step = DecodeWithPast(model).eval()
    # example sizes >= 2: torch.export specializes dimensions that are 0 or 1 in the example
    ids = torch.zeros(1, 2, dtype=torch.long)
    past = [torch.zeros(1, c.n_head, 3, c.head_dim) for _ in range(2 * c.n_layer)]
    T = Dim("T", min=1, max=c.block_size)
    P = Dim("P", min=0, max=c.block_size)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with torch.no_grad():
        torch.onnx.export(step, (ids, past), str(tmp), input_names=input_names(c.n_layer),
                          output_names=output_names(c.n_layer),
                          dynamic_shapes=({1: T}, [{2: P}] * (2 * c.n_layer)),
                          dynamo=True, external_data=False, optimize=True, verbose=False)
    os.replace(tmp, path)
    return path
