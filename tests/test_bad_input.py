"""Bad input gets a clear error naming what was wrong and what is allowed."""
import pytest
import torch

from smallmind_torch import GPT, ModelConfig, OptConfig
from conftest import TINY


def test_config_errors():
    with pytest.raises(ValueError, match=r"divisible by n_head .*allowed.*\[1, 2, 5, 10\]"):
        ModelConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="positive int"):
        ModelConfig(n_layer=0)
    with pytest.raises(ValueError, match=r"softmax='fast' is not a known form; allowed: \['naive', 'torch', 'custom'\]"):
        OptConfig(softmax="fast")
    with pytest.raises(ValueError, match="unknown OptConfig switch"):
        OptConfig().replace(softmaxx="torch")
    with pytest.raises(ValueError, match="workspace=1 is not a known form"):
        OptConfig(workspace=1)


def test_unknown_phase():
    with pytest.raises(ValueError, match=r"unknown phase 'phase9'; allowed: \['reference', 'phase0'"):
        GPT(TINY).set_phase("phase9")
    with pytest.raises(ValueError, match="unknown phase"):
        GPT(TINY, phase="turbo")


@pytest.mark.parametrize("idx, message", [
    (torch.tensor([[0, 64]]), r"token ids must lie in \[0, 63\]; got min 0, max 64"),
    (torch.tensor([[-1, 3]]), "token ids must lie in"),
    (torch.zeros(1, 33, dtype=torch.long), "sequence length 33 exceeds 32"),
    (torch.zeros(3, dtype=torch.long), r"shape \(B, T\)"),
    (torch.zeros(1, 3), "LongTensor"),
    (torch.zeros(1, 0, dtype=torch.long), "T >= 1"),
])
def test_forward_rejects(idx, message):
    with pytest.raises(ValueError, match=message):
        GPT(TINY)(idx)


def test_generate_rejects():
    model = GPT(TINY)
    idx = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="token ids"):
        model.generate(torch.tensor([[99]]), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(idx, -1)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(idx, 2, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(idx, 2, temperature=1.0, top_k=0)
    with pytest.raises(TypeError, match="ModelConfig"):
        GPT({"n_layer": 2})
