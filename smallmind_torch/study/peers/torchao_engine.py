"""The torchao engines: HF `generate` with a static cache under torch.compile (hf-compiled's
recipe, hf_engines.py) after torchao's `quantize_` replaced the weights of every linear layer,
the lm head included.

    torchao-int8  Int8WeightOnlyConfig: int8 weights, one scale per output row; activations
                  stay float32 (the weights are dequantized inside the matmul)
    torchao-int4  IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)):
                  int4 weights, one scale per group of 32 along a row, weight-only. torchao
                  0.18's Int4WeightOnlyConfig does not run on a CPU at float32 (its `plain`
                  layout needs the mslk package, `plain_int32` has no CPU kernel, the tile
                  layout wants bfloat16) and its packed int4 CPU kernels (`opaque_torchao_*`)
                  are not in the PyPI wheel; this layout keeps each int4 value in a byte, so it
                  reads as many weight bytes as int8 does. If it fails to prepare on a machine,
                  the row is an error with torchao's reason.

HF's GPT-2 keeps its block's linear layers as Conv1D (weight (in, out)); `quantize_` only
replaces nn.Linear, so they become nn.Linear first (`linears_from_conv1d`: the same product).
"""
from __future__ import annotations

import time

from .hf_engines import HFCompiledEngine


def linears_from_conv1d(module) -> int:
    """Replace every transformers Conv1D under `module` with the nn.Linear computing the same
    (weight transposed, bias shared); the number replaced."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    replaced = 0
    for name, child in module.named_children():
        if isinstance(child, Conv1D):
            n_in, n_out = child.weight.shape
            linear = nn.Linear(n_in, n_out, device=child.weight.device, dtype=child.weight.dtype)
            linear.weight = nn.Parameter(child.weight.detach().t().contiguous(), requires_grad=False)
            linear.bias = child.bias
            setattr(module, name, linear)
            replaced += 1
        else:
            replaced += linears_from_conv1d(child)
    return replaced


class TorchAOInt8Engine(HFCompiledEngine):
    name = "torchao-int8"
    label = "torchao int8 weight-only, static cache + torch.compile"
    requires = ("torchao", "transformers", "torch")
    extra = "torchao"
    weights = "int8"

    def config(self):
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig()

    def quantize(self, hf) -> dict:
        from torchao.quantization import quantize_

        start = time.perf_counter()
        linears_from_conv1d(hf)
        quantize_(hf, self.config())
        return {"quantize_s": time.perf_counter() - start}


class TorchAOInt4Engine(TorchAOInt8Engine):
    name = "torchao-int4"
    label = "torchao int4 weight-only, groups of 32, static cache + torch.compile"
    weights = "int4"
    group_size = 32

    def config(self):
        import torch
        from torchao.quantization import IntxWeightOnlyConfig
        from torchao.quantization.granularity import PerGroup

        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(self.group_size))
