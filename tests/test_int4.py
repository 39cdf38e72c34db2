"""int4 weights at the model's level: every candidate of `max-int4` gives the greedy tokens and
(to config.check_tolerance) the logits of reference_for(its opt), reference's forms on the same
int4 weights; a width int4 cannot hold is refused clearly; the bytes a decode step reads."""
import pytest
import torch
from torch.testing import assert_close

from smallmind_torch import GPT, ModelConfig
from smallmind_torch.config import MAX_INT4_CANDIDATES, check_tolerance, reference_for
from smallmind_torch.weight_formats import FormatUnavailable, decode_weight_bytes

from helpers import TINY, set_phase_or_skip


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(TINY).eval()


@pytest.mark.parametrize("label", list(MAX_INT4_CANDIDATES))
def test_each_candidate_matches_its_reference(model, label):
    opt = MAX_INT4_CANDIDATES[label]
    idx = torch.randint(0, TINY.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    set_phase_or_skip(model, opt)
    with torch.no_grad():
        logits = model(idx)
    tokens = model.generate(idx, TINY.block_size)  # past the context
    model.set_phase(reference_for(opt))
    with torch.no_grad():
        assert_close(logits, model(idx), rtol=0, atol=check_tolerance(opt))
    assert torch.equal(tokens, model.generate(idx, TINY.block_size))


def test_max_int4_runs_a_candidate(model):
    set_phase_or_skip(model, "max-int4")
    assert model.phase.opt in MAX_INT4_CANDIDATES.values()
    assert model.phase.description.startswith("max-int4 = int4 ")


def test_a_width_int4_cannot_hold_is_refused():
    odd = GPT(ModelConfig(n_layer=1, n_head=3, n_embd=48, vocab_size=40, block_size=8))
    with pytest.raises(FormatUnavailable, match="n_embd a multiple of their group size 32"):
        odd.set_phase("max-int4")


def test_a_decode_step_reads_half_a_byte_per_weight_and_a_scale_per_group(model):
    c, v, n = TINY.n_embd, TINY.vocab_size, TINY.n_layer
    matrices = n * 12 * c * c + v * c  # the blocks' four matrices and the lm head
    others = decode_weight_bytes(model, "fp32") - 4 * matrices
    assert decode_weight_bytes(model, "int4") == others + matrices // 2 + 4 * (matrices // 32)
