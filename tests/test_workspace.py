"""Preallocated workspace: after warm-up a forward allocates nothing for its intermediates."""
import pytest
import torch

from smallmind_torch import GPT, PHASES, ModelConfig
from smallmind_torch.workspace import workspace_forward
from helpers import TINY, allocations


@pytest.mark.parametrize("batch", [1, 2])
def test_phase1_forward_allocates_nothing_after_warm_up(batch):
    model = GPT(ModelConfig()).eval().set_phase("phase1")
    ws = model.setup_workspace(max_batch=2)
    idx = torch.randint(0, 512, (batch, 128))
    buffers = {name: b.data_ptr() for name, b in ws.buffers.items()}
    with torch.no_grad():
        count, nbytes = allocations(lambda: workspace_forward(model, idx, 0, False, False))
        short = idx[:, :17]
        short_count, _ = allocations(lambda: workspace_forward(model, short, 0, False, False))
    assert (count, nbytes) == (0, 0)
    assert short_count == 0
    assert {name: b.data_ptr() for name, b in ws.buffers.items()} == buffers
    assert ws.allocations == len(buffers)


def test_reference_forward_allocates_per_intermediate():
    """The counterpart: the allocating path makes a fresh tensor per intermediate."""
    model = GPT(ModelConfig()).eval()
    idx = torch.randint(0, 512, (1, 128))
    with torch.no_grad():
        count, nbytes = allocations(lambda: model(idx))
    assert count > 10 * model.config.n_layer
    assert nbytes > 128 * 512 * 4  # at least the logits


def test_phase1_decode_with_cache_allocates_nothing():
    model = GPT(TINY).eval().set_phase(PHASES["phase1"].replace(kv_cache=True))
    model.setup_workspace(max_batch=1)
    model.setup_caches(max_batch=1)
    idx = torch.randint(0, TINY.vocab_size, (1, 8))
    model.prefill(idx)
    with torch.no_grad():
        count, _ = allocations(lambda: model.decode_step(idx[:, -1:]))
    assert count == 0


def test_forward_output_survives_the_next_call():
    model = GPT(TINY).eval().set_phase("phase1")
    a, b = torch.randint(0, TINY.vocab_size, (2, 1, 6))
    with torch.no_grad():
        logits_a = model(a)
        kept = logits_a.clone()
        model(b)
    assert torch.equal(logits_a, kept)


def test_workspace_with_autograd_warns_and_allocates():
    model = GPT(TINY).set_phase("phase1")
    idx = torch.randint(0, TINY.vocab_size, (1, 6))
    with pytest.warns(UserWarning, match="inference only"):
        logits = model(idx)
    logits.sum().backward()
    assert model.transformer.wte.weight.grad is not None


def test_setup_workspace_needs_the_switch():
    with pytest.raises(ValueError, match="workspace=True"):
        GPT(TINY).setup_workspace()


@pytest.mark.parametrize("phase", ["phase1", "phase2", "max"])
def test_inference_mode_then_no_grad(phase):
    """Buffers first made under inference_mode are written again under no_grad (generate)."""
    from helpers import set_phase_or_skip

    model = set_phase_or_skip(GPT(TINY).eval(), phase)
    idx = torch.randint(0, TINY.vocab_size, (1, 6))
    with torch.inference_mode():
        first = model(idx)
        model.generate(idx, 3)
    assert not model.phase.workspace.buffers["residual"].is_inference()
    with torch.no_grad():
        torch.testing.assert_close(model(idx), first)
    model.generate(idx, 3)
    with torch.inference_mode():
        model.generate(idx, 3)
