"""Static KV cache: token-for-token equal to no-cache generation, and its guard rails."""
import pytest
import torch
from torch.testing import assert_close

from smallmind_torch import GPT, PHASES, ModelConfig
from smallmind_torch.config import MAX_CANDIDATES
from helpers import TINY, set_phase_or_skip

KV = PHASES["reference"].replace(kv_cache=True)
KV_WORKSPACE = PHASES["phase1"].replace(kv_cache=True)  # naive softmax/LN, batched, buffers


@pytest.fixture(scope="module")
def no_cache_runs():
    """Seed-shape weights and reference's no-cache generation of 200 tokens (past block_size
    = 128) after each prompt, computed once for every phase below to match."""
    torch.manual_seed(1234)
    config = ModelConfig()
    model = GPT(config).eval()
    runs = {}
    for prompt_len in (3, config.block_size):
        idx = torch.randint(0, config.vocab_size, (2, prompt_len))
        runs[prompt_len] = idx, model.generate(idx, 200)
    return model.state_dict(), runs


@pytest.mark.parametrize("opt", [KV, KV_WORKSPACE, *MAX_CANDIDATES.values()],
                         ids=["kv", "kv+workspace", *MAX_CANDIDATES])
@pytest.mark.parametrize("prompt_len", [3, "block"])
def test_cache_generation_equals_no_cache(opt, prompt_len, no_cache_runs):
    weights, runs = no_cache_runs
    model = GPT(ModelConfig()).eval()
    model.load_state_dict(weights)
    idx, expected = runs[model.config.block_size if prompt_len == "block" else prompt_len]
    set_phase_or_skip(model, opt)
    assert torch.equal(model.generate(idx, 200), expected)


def test_prefill_then_decode_matches_full_forward_logits():
    model = GPT(TINY).eval()
    idx = torch.randint(0, TINY.vocab_size, (3, 12))
    with torch.no_grad():
        full = model(idx)
    model.set_phase(KV)
    assert_close(model.prefill(idx[:, :5]), full[:, 4])
    for t in range(5, 12):
        assert_close(model.decode_one_token(idx[:, t:t + 1]), full[:, t])
    assert (model.phase.cache_length, model.phase.cache_batch) == (12, 3)


def test_cache_buffers_are_allocated_once():
    model = GPT(TINY).eval().set_phase(KV)
    model.setup_caches(max_batch=2)
    pointers = [(c.k_cache.data_ptr(), c.v_cache.data_ptr()) for c in model.phase.kv_caches]
    assert model.phase.kv_caches[0].k_cache.shape == (2, TINY.n_head, TINY.block_size, TINY.head_dim)
    model.generate(torch.zeros(2, 4, dtype=torch.long), 50)
    assert [(c.k_cache.data_ptr(), c.v_cache.data_ptr()) for c in model.phase.kv_caches] == pointers


def test_batch_larger_than_cache_is_a_clear_error():
    model = GPT(TINY).eval().set_phase(KV)
    model.setup_caches(max_batch=2)
    with pytest.raises(ValueError, match="exceeds the KV cache's max_batch 2"):
        model.prefill(torch.zeros(3, 4, dtype=torch.long))


def test_generate_grows_a_too_small_cache():
    model = GPT(TINY).eval().set_phase(KV)
    model.setup_caches(max_batch=1)
    assert model.generate(torch.zeros(3, 4, dtype=torch.long), 5).shape == (3, 9)
    assert model.phase.kv_caches[0].max_batch == 3


def test_prompt_longer_than_block_size_with_cache():
    model = GPT(TINY).eval().set_phase(KV)
    long_prompt = torch.zeros(1, TINY.block_size + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="exceeds 32"):
        model.prefill(long_prompt)
    # generate crops to the last block_size tokens, as nanoGPT does
    expected = GPT.generate(model.set_phase("reference"), long_prompt, 5)
    assert torch.equal(model.set_phase(KV).generate(long_prompt, 5), expected)


def test_cache_after_phase_switch_is_reset():
    model = GPT(TINY).eval().set_phase(KV)
    model.prefill(torch.zeros(1, 4, dtype=torch.long))
    model.set_phase(KV_WORKSPACE)
    assert model.phase.kv_caches is None
    with pytest.raises(ValueError, match="call prefill first"):
        model.decode_one_token(torch.zeros(1, 1, dtype=torch.long))


def test_decode_guards():
    model = GPT(TINY).eval().set_phase(KV)
    model.prefill(torch.zeros(2, TINY.block_size, dtype=torch.long))
    with pytest.raises(ValueError, match="KV cache is full"):
        model.decode_one_token(torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(B, 1\)"):
        model.decode_one_token(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids must lie"):
        model.decode_one_token(torch.full((2, 1), TINY.vocab_size))
    with pytest.raises(ValueError, match="kv_cache=True"):
        GPT(TINY).prefill(torch.zeros(1, 2, dtype=torch.long))
