"""The fused_decode switch on the model: equal to reference, allocation-free decode steps."""
import pytest
import torch
from torch.testing import assert_close

from smallmind_torch import GPT, ModelConfig, OptConfig, runtime
from smallmind_torch.config import MAX_CANDIDATES

from helpers import allocations, set_phase_or_skip

FUSED = MAX_CANDIDATES["fused decode"]


def test_config_requires_kv_cache_and_workspace():
    with pytest.raises(ValueError, match="fused_decode=True needs kv_cache=True, workspace=True"):
        OptConfig(fused_decode=True)
    with pytest.raises(ValueError, match="got workspace=False"):
        OptConfig(fused_decode=True, kv_cache=True)
    assert OptConfig(fused_decode=True, kv_cache=True, workspace=True).needs_custom_ops
    assert next(iter(MAX_CANDIDATES.values())).fused_decode  # the first "max" candidate


def test_max_prefers_fused_decode():
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=16, block_size=8))
    set_phase_or_skip(model, FUSED)
    assert model.set_phase("max").phase.opt.fused_decode
    assert model.phase.description.startswith("max = fused decode")


def test_generation_equals_reference_past_block_size():
    config = ModelConfig()  # seed shape: 200 new tokens run past block_size = 128
    model = GPT(config).eval()
    idx = torch.randint(0, config.vocab_size, (2, 5))
    expected = model.generate(idx, 200)
    set_phase_or_skip(model, FUSED)
    assert torch.equal(model.generate(idx, 200), expected)


@pytest.mark.parametrize("batch", [1, 3])
def test_prefill_then_decode_logits_match_full_forward(batch):
    config = ModelConfig(n_layer=2, n_head=3, n_embd=48, vocab_size=64, block_size=24)
    model = GPT(config).eval()
    idx = torch.randint(0, config.vocab_size, (batch, config.block_size))
    with torch.no_grad():
        expected = model(idx)  # reference, full forward
    set_phase_or_skip(model, FUSED)
    model.setup_caches(max_batch=4)
    logits = [model.prefill(idx[:, :5])]
    for t in range(5, config.block_size):
        logits.append(model.decode_one_token(idx[:, t:t + 1]))
    assert_close(torch.stack(logits, dim=1), expected[:, 4:], rtol=1e-5, atol=1e-5)


def test_fused_decode_step_allocates_nothing_after_warm_up():
    model = set_phase_or_skip(GPT(ModelConfig()).eval(), FUSED)
    model.setup_workspace(max_batch=1)
    model.setup_caches(max_batch=1)
    idx = torch.randint(0, 512, (1, 8))
    model.prefill(idx)
    ws = model.phase.workspace
    with torch.no_grad():
        model.decode_step(idx[:, -1:])  # warm-up: thread_local scratch, first buffers
        n = ws.allocations
        count, nbytes = allocations(lambda: model.decode_step(idx[:, -2:-1]))
    assert (count, nbytes) == (0, 0)
    assert ws.allocations == n


def _prefilled(batch=3, seed=0):
    torch.manual_seed(seed)
    config = ModelConfig(n_layer=2, n_head=3, n_embd=48, vocab_size=64, block_size=24)
    model = set_phase_or_skip(GPT(config).eval(), FUSED)
    model.setup_caches(max_batch=4)
    idx = torch.randint(0, config.vocab_size, (batch, config.block_size))
    model.prefill(idx[:, :5])
    return model, idx


def test_decode_step_is_one_op_call_per_token():
    """The whole step (embeddings, blocks, ln_f, lm head) is the one decode_step_ op."""
    from torch.profiler import ProfilerActivity, profile

    model, idx = _prefilled(batch=1)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model.decode_step(idx[:, 5:6])
    names = [e.name for e in prof.events()]
    assert names.count("smallmind::decode_step_") == 1
    assert not any(n.startswith("smallmind::") and n != "smallmind::decode_step_" for n in names)


def test_decode_greedy_is_the_argmax_of_the_same_step():
    model, idx = _prefilled()
    twin, _ = _prefilled()  # same weights and prompt: twin decodes with decode_step
    with torch.no_grad():
        for t in range(5, 12):
            ids = runtime.fused_decode_greedy(model, idx[:, t:t + 1], t)
            assert ids.shape == (3, 1) and ids.dtype == torch.long
            logits = twin.decode_one_token(idx[:, t:t + 1])
            assert torch.equal(ids.view(3), logits.argmax(-1))
            assert torch.equal(model.phase.workspace.take("logits", 3, 1, 64).view(3, 64), logits)


def test_decode_greedy_allocates_nothing_after_warm_up():
    model, idx = _prefilled(batch=2)
    with torch.no_grad():
        runtime.fused_decode_greedy(model, idx[:, 5:6], 5)  # warm-up
        n = model.phase.workspace.allocations
        count, nbytes = allocations(lambda: runtime.fused_decode_greedy(model, idx[:, 6:7], 6))
    assert (count, nbytes) == (0, 0)
    assert model.phase.workspace.allocations == n


def test_untied_lm_head_is_refused():
    model, idx = _prefilled(batch=1)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    with pytest.raises(ValueError, match="lm head tied to the token embedding"):
        model.setup_caches(max_batch=1)  # where the fused step is made
    with pytest.raises(ValueError, match="lm head tied to the token embedding"):
        model.generate(idx[:, :5], 3)


def test_decode_greedy_inside_then_outside_inference_mode():
    """The next-token buffer is made once and reused: made inside inference_mode, it must still
    be writable by a later call under no_grad (as generate runs)."""
    model, idx = _prefilled(batch=1)
    model.setup_caches(max_batch=1)
    with torch.inference_mode():
        model.prefill(idx[:, :5])
        first = runtime.fused_decode_greedy(model, idx[:, 5:6], 5).clone()
    with torch.no_grad():
        again = runtime.fused_decode_greedy(model, idx[:, 5:6], 5)
        assert torch.equal(again, first)
        again.add_(0)  # a normal tensor: writable outside inference mode


@pytest.mark.parametrize("prompt", [5, 40])  # the row-batched path, the blocked GEMM's
def test_fused_prefill_and_verify_match_full_forward(prompt):
    """fused_prefill: the prompt's prefill, then a verify of 4 tokens, a rewind of 2 and a
    verify of 3 more, through the fused step on T tokens: the full forward's logits."""
    config = ModelConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=64, block_size=64)
    model = GPT(config).eval()
    idx = torch.randint(0, config.vocab_size, (2, prompt + 5))
    with torch.no_grad():
        expected = model(idx)
    set_phase_or_skip(model, MAX_CANDIDATES["fused decode + fused prefill"])
    assert model.phase.forms.prefill is runtime.fused_prefill
    assert_close(model.prefill(idx[:, :prompt]), expected[:, prompt - 1], rtol=1e-5, atol=1e-5)
    verified = model.verify(idx[:, prompt:prompt + 4])
    assert_close(verified, expected[:, prompt:prompt + 4], rtol=1e-5, atol=1e-5)
    model.rewind(prompt + 2)
    assert_close(model.verify(idx[:, prompt + 2:]), expected[:, prompt + 2:], rtol=1e-5,
                 atol=1e-5)
    assert model.phase.cache_length == prompt + 5


def test_the_held_model_refuses_bad_arguments_when_made():
    """DecodeModel (the fused step's arguments held in C++) checks them when it is made, with
    the op's messages."""
    model, _ = _prefilled(batch=1)
    args = list(model.phase.fused_step.args)
    DecodeModel = torch.classes.smallmind.DecodeModel
    with pytest.raises(ValueError, match="format must be 'fp32', 'int8', 'w8a8' or 'int4', got 'fp16'"):
        DecodeModel(*args, "fp16", [], [], 0)
    with pytest.raises(ValueError, match="format 'fp32' takes no low-precision weights"):
        DecodeModel(*args, "fp32", [torch.zeros(2, dtype=torch.int8)], [], 0)
    args[2] = list(args[2])
    args[2][2] = args[2][2].t()  # block 0's c_attn weight, not contiguous
    with pytest.raises(RuntimeError, match=r"block_params\[2\] \(block 0 attn.c_attn.weight\)"):
        DecodeModel(*args, "fp32", [], [], 0)
    with pytest.raises(RuntimeError, match="'weights_q8' and 'scales_q8' must each hold 4 tensors "
                                           "per block"):
        DecodeModel(*model.phase.fused_step.args, "int8", [], [], 0)


def test_a_parameter_reshaped_in_place_is_refused_not_read_stale():
    """The held model keeps the parameters themselves and checks them on every step: one
    swapped for a tensor of another shape in place (`set_`) is named, never read through a
    pointer taken when the model was made."""
    model, idx = _prefilled(batch=1)
    step = model.phase.fused_step
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight.set_(torch.zeros(5, 48))
        with pytest.raises(RuntimeError, match=r"block_params\[20\] \(block 1 mlp.c_fc.weight\)"):
            step(idx[:, 5:6], 5)


def test_generate_runs_the_greedy_steps_of_a_cache_fill_in_one_call(monkeypatch):
    """Greedy generate on fused decode: no Python between the steps (one generate_greedy call
    for the steps the cache holds), each step still one decode_step_ under a decode_step label;
    the tokens those of reference and of the stream, past block_size (where every token
    refills the cache from the cropped window)."""
    from torch.profiler import ProfilerActivity, profile
    from smallmind_torch.fused_decode import FusedStep

    config = ModelConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=64, block_size=16)
    model = GPT(config).eval()
    idx = torch.randint(0, config.vocab_size, (2, 5))
    expected = model.generate(idx, 40)
    set_phase_or_skip(model, FUSED)
    calls, original = [], FusedStep.generate_greedy

    def counted(self, tokens, first, count, start):
        calls.append((first, count, start))
        return original(self, tokens, first, count, start)

    monkeypatch.setattr(FusedStep, "generate_greedy", counted)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        tokens = model.generate(idx, 40)
    assert torch.equal(tokens, expected)
    # the prompt's prefill (5) gives token 5; tokens 6 .. 16 fill the cache in one call; each
    # of the 28 tokens after refills the cache (a prefill of the last 16)
    assert calls == [(6, 11, 5)]
    names = [e.name for e in prof.events()]
    prefills = 1 + 28 if model.phase.opt.fused_prefill else 0
    assert names.count("smallmind::decode_step_") == names.count("decode_step") == 11 + prefills
    assert torch.equal(torch.cat([idx, *model.generate_stream(idx, 40)], dim=1), expected)
    assert len(calls) == 1 + 11  # the stream: one step per call
    chunks = list(model.generate_chunks(idx, 40))  # as the calls compute them
    assert [c.shape for c in chunks] == [(2, 1), (2, 11)] + [(2, 1)] * 28
    assert torch.equal(torch.cat([idx, *chunks], dim=1), expected)


def test_generate_greedy_refuses_columns_outside_the_buffer():
    model, idx = _prefilled(batch=1)
    tokens = torch.zeros(1, 10, dtype=torch.long)
    with torch.no_grad():
        for first, count in ((0, 1), (5, 6), (3, -1)):
            with pytest.raises(ValueError, match=r"columns first .. first \+ count - 1 must lie "
                                                 r"in \[1, 9\]"):
                model.phase.fused_step.generate_greedy(tokens, first, count, 5)


@pytest.mark.parametrize("fmt", ["int8", "w8a8"])
def test_a_long_int8_prefill_runs_through_the_modules(fmt):
    """On int8 weights the fused prefill takes fewer than INT8_MODULE_PREFILL_ROWS rows; from
    there the modules (the library's int8 GEMM) run it: the same logits either way, the decode
    steps on the fused op."""
    from torch.profiler import ProfilerActivity, profile

    from smallmind_torch.config import MAX_INT8_CANDIDATES

    config = ModelConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=64, block_size=64)
    model = GPT(config).eval()
    set_phase_or_skip(model, MAX_INT8_CANDIDATES[f"{fmt} fused decode + fused prefill"])
    rows = runtime.INT8_MODULE_PREFILL_ROWS
    model.setup_caches(max_batch=2)
    for B, T in ((1, rows - 1), (2, rows // 2), (1, rows + 3)):
        idx = torch.randint(0, config.vocab_size, (B, T))
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
            logits = model.prefill(idx)
        fused = sum(e.name == "smallmind::decode_step_q8_" for e in prof.events())
        assert fused == (1 if B * T < rows else 0), (B, T)
        with torch.no_grad():
            expected = model.forward_last(idx)
        assert_close(logits, expected, rtol=1e-4, atol=1e-4)
