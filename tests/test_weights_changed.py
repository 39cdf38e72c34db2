"""Every way a user changes a model's weights after a generation reaches the next one: for each
preset, the next `generate` equals a fresh model's on the new weights (the phase's copies in
another format and the fused step's arguments are made again, the caches refilled)."""
import pytest
import torch
from torch import nn

from smallmind_torch import GPT, presets

from helpers import TINY, set_phase_or_skip


def _in_place(model, new):
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(new[name])


def _parameters_replaced(model, new):
    for module_name, module in model.named_modules():
        for name in list(module._parameters):
            if module is model.lm_head:
                continue  # tied to wte, below
            key = f"{module_name}.{name}" if module_name else name
            setattr(module, name, nn.Parameter(new[key].clone()))
    model.lm_head.weight = model.transformer.wte.weight


def _data_rebound(model, new):
    for name, p in model.named_parameters():
        p.data = new[name].clone()


def _moved_and_edited(model, new):
    model.double()
    _in_place(model, {k: v.double() for k, v in new.items()})
    model.float()


CHANGES = {
    "in place": _in_place,
    "Parameter replaced": _parameters_replaced,
    "load_state_dict": lambda model, new: model.load_state_dict(new),
    "load_state_dict(assign=True)": lambda model, new: model.load_state_dict(
        {k: v.clone() for k, v in new.items()}, assign=True),
    ".data = ...": _data_rebound,
    "to() and back": _moved_and_edited,
}


@pytest.fixture(scope="module")
def new_weights():
    torch.manual_seed(7)
    return GPT(TINY).state_dict()


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("phase", presets())
def test_the_next_generate_sees_the_new_weights(phase, change, new_weights):
    idx = torch.randint(0, TINY.vocab_size, (2, 5))
    model = set_phase_or_skip(GPT(TINY).eval(), phase)
    before = model.generate(idx, 6)
    CHANGES[change](model, new_weights)
    fresh = GPT(TINY).eval()
    fresh.load_state_dict(new_weights)
    expected = set_phase_or_skip(fresh, phase).generate(idx, 6)
    assert torch.equal(model.generate(idx, 6), expected)
    assert not torch.equal(before, expected)  # the change is one the tokens show
    with torch.no_grad():
        torch.testing.assert_close(model(idx), fresh(idx), rtol=0, atol=0)


def test_load_state_dict_with_assign_keeps_the_lm_head_tied(new_weights):
    model = GPT(TINY)
    model.load_state_dict({k: v.clone() for k, v in new_weights.items()}, assign=True)
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize("phase", presets())
def test_a_write_through_data_is_seen_after_set_phase(phase, new_weights):
    """`w.data.copy_(...)` bumps no version counter: nothing can notice it, but setting the
    phase again makes every copy in another format (and every packed weight) again."""
    idx = torch.randint(0, TINY.vocab_size, (2, 5))
    model = set_phase_or_skip(GPT(TINY).eval(), phase)
    model.generate(idx, 6)
    for name, p in model.named_parameters():
        p.data.copy_(new_weights[name])
    model.set_phase(phase)
    fresh = GPT(TINY).eval()
    fresh.load_state_dict(new_weights)
    assert torch.equal(model.generate(idx, 6), set_phase_or_skip(fresh, phase).generate(idx, 6))
