"""Interop with Hugging Face transformers (and nanoGPT's state_dict layout)."""
import pytest
import torch
from torch.testing import assert_close

from smallmind_torch import GPT, ModelConfig

transformers = pytest.importorskip("transformers")

HF_SHAPES = [
    dict(n_layer=2, n_head=4, n_embd=64, vocab_size=100, n_positions=32),
    dict(n_layer=3, n_head=3, n_embd=48, vocab_size=77, n_positions=24),
    dict(n_layer=1, n_head=1, n_embd=16, vocab_size=50, n_positions=16),
]


def random_hf(shape):
    config = transformers.GPT2Config(**shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("shape", HF_SHAPES, ids=lambda s: f"L{s['n_layer']}H{s['n_head']}C{s['n_embd']}")
def test_from_hf_matches_transformers(shape):
    hf = random_hf(shape)
    model = GPT.from_hf(hf)
    idx = torch.randint(0, shape["vocab_size"], (2, 10))
    with torch.no_grad():
        assert_close(model(idx), hf(idx).logits, rtol=1e-5, atol=1e-5)
    new = shape["n_positions"] - 10  # transformers cannot go past n_positions
    expected = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=new,
                           min_new_tokens=new, do_sample=False, pad_token_id=0)
    for phase in ["reference", "phase1", "max"]:
        assert torch.equal(model.set_phase(phase).generate(idx, new), expected), phase


# GPT2Config fields that change the math, each at a value other than GPT-2's
MATH_FIELDS = [dict(activation_function="relu"), dict(activation_function="gelu"),
               dict(activation_function="gelu_pytorch_tanh"), dict(scale_attn_weights=False),
               dict(scale_attn_by_inverse_layer_idx=True), dict(reorder_and_upcast_attn=True),
               dict(layer_norm_epsilon=1e-2), dict(n_inner=96), dict(tie_word_embeddings=False),
               dict(add_cross_attention=True)]


@pytest.mark.parametrize("field", MATH_FIELDS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_every_config_field_that_changes_the_math_is_imported_or_refused(field):
    """Imported only where this model computes what transformers computes; else refused."""
    hf = random_hf(HF_SHAPES[0] | field)
    if not field.get("tie_word_embeddings", True):
        with torch.no_grad():  # untied: give the head values of its own
            hf.lm_head.weight.copy_(torch.randn_like(hf.lm_head.weight))
    idx = torch.randint(0, HF_SHAPES[0]["vocab_size"], (2, 10))
    try:
        model = GPT.from_hf(hf)
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    with torch.no_grad():
        assert_close(model(idx), hf(idx).logits, rtol=1e-5, atol=1e-5)


def test_from_hf_state_dict_needs_n_head():
    hf = random_hf(HF_SHAPES[0])
    with pytest.raises(ValueError, match="n_head"):
        GPT.from_hf(hf.state_dict())
    model = GPT.from_hf(hf.state_dict(), n_head=4)
    assert model.config == ModelConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=100, block_size=32)


def test_nanogpt_layout_and_round_trip():
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=40, block_size=16))
    clone = GPT.from_hf(model.state_dict(), n_head=2)  # nanoGPT layout: nn.Linear weights
    idx = torch.randint(0, 40, (1, 9))
    with torch.no_grad():
        assert torch.equal(clone(idx), model(idx))
        hf = model.to_hf()
        assert_close(hf(idx).logits, model(idx), rtol=1e-5, atol=1e-5)
        assert torch.equal(GPT.from_hf(hf)(idx), model(idx))


def test_from_hf_rejects_garbage():
    with pytest.raises(TypeError, match="GPT2LMHeadModel or a state_dict"):
        GPT.from_hf(42)
    with pytest.raises(ValueError, match="not a GPT-2 state_dict"):
        GPT.from_hf({"foo": torch.zeros(1)}, n_head=1)
