"""Every preset gives the reference logits and the same greedy tokens: `reference`'s on fp32
weights, and for a preset on a lossy weight format (max-int8) those of reference's forms on the
same rounded weights (config.reference_for); what the format costs against fp32 is bounded in
test_quantized.py."""
import warnings

import pytest
import torch
from torch.testing import assert_close

from smallmind_torch import FORMS, GPT, OptConfig, presets
from smallmind_torch.config import CHECK_TOLERANCE, LOSSY_FORMS, REQUIRES, check_tolerance, reference_for
from helpers import SHAPES, TINY, set_phase_or_skip

each_phase = pytest.mark.parametrize("phase", presets())
each_shape = pytest.mark.parametrize("shape", list(SHAPES))


@each_phase
@each_shape
@pytest.mark.parametrize("batch", [1, 3])
def test_logits_match_reference(phase, shape, batch):
    config = SHAPES[shape]
    model = GPT(config).eval()
    idx = torch.randint(0, config.vocab_size, (batch, min(10, config.block_size)))
    set_phase_or_skip(model, phase)
    with torch.no_grad():
        actual = model(idx)
        expected = model.set_phase(reference_for(model.phase.opt))(idx)
    assert actual.shape == (batch, idx.size(1), config.vocab_size)
    _assert_close_for(model.phase.opt, actual, expected)


@each_phase
@each_shape
@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_tokens_match_reference(phase, shape, batch):
    config = SHAPES[shape]
    model = GPT(config).eval()
    idx = torch.randint(0, config.vocab_size, (batch, 5))
    # Past block_size on the small shapes; the seed shape's runs past it are in test_kv_cache.
    new = 24 if shape == "seed" else config.block_size + 8
    set_phase_or_skip(model, phase)
    actual = model.generate(idx, new)
    expected = model.set_phase(reference_for(model.phase.opt)).generate(idx, new)
    assert actual.shape == (batch, 5 + new)
    assert torch.equal(actual, expected)


@each_phase
def test_full_block_prefill_logits_match(phase):
    config = SHAPES["odd"]
    model = GPT(config).eval()
    idx = torch.randint(0, config.vocab_size, (2, config.block_size))
    set_phase_or_skip(model, phase)
    with torch.no_grad():
        actual = model(idx)
        opt = model.phase.opt
        _assert_close_for(opt, actual, model.set_phase(reference_for(opt))(idx))


def _assert_close_for(opt, actual, expected):
    """Float rounding's tolerance, or the check's bound for a format that rounds the
    activations too (config.CHECK_TOLERANCE: w8a8, int4, bf16)."""
    if opt.weights in CHECK_TOLERANCE:
        assert_close(actual, expected, rtol=0, atol=check_tolerance(opt))
    else:
        assert_close(actual, expected)


def test_every_single_switch_matches_reference():
    """Each form of each switch, alone on top of reference (custom ones if buildable)."""
    model = GPT(TINY).eval()
    idx = torch.randint(0, TINY.vocab_size, (2, 9))
    with torch.no_grad():
        expected = model(idx)
    expected_tokens = model.generate(idx, 30)  # past block_size
    for name, forms in FORMS.items():
        for form in forms:
            if (name, form) in LOSSY_FORMS:
                continue  # int8 / bf16 weights: bounded in test_quantized.py
            needs = REQUIRES.get((name, form), {})  # e.g. fused_decode needs kv_cache + workspace
            opt = OptConfig().replace(**needs, **{name: form})
            try:
                model.set_phase(opt)
            except RuntimeError:
                continue  # custom ops unavailable: covered by the preset tests' skips
            with torch.no_grad():
                assert_close(model(idx), expected, msg=f"{name}={form!r}")
            assert torch.equal(model.generate(idx, 30), expected_tokens), f"{name}={form!r}"


def test_switching_phase_keeps_state_dict():
    model = GPT(TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for phase in presets():
        try:
            model.set_phase(phase)
        except RuntimeError:
            continue
        model.generate(torch.zeros(1, 3, dtype=torch.long), 5)
        after = model.state_dict()
        assert after.keys() == before.keys()
        for key in before:
            assert torch.equal(after[key], before[key]), key


@each_phase
def test_gradients_match_reference_in_training(phase):
    """Training goes through the allocating forms (autograd) in every phase."""
    model = GPT(TINY)
    idx = torch.randint(0, TINY.vocab_size, (2, 7))
    targets = torch.randint(0, TINY.vocab_size, (2, 7))

    def grads():
        model.zero_grad()
        logits = model(idx)
        torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    expected = grads()
    set_phase_or_skip(model, phase)
    if ("weights", model.phase.opt.weights) in LOSSY_FORMS:  # int8 copies have no gradient
        with pytest.raises(RuntimeError, match="is for inference"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a workspace phase's "inference only" warning
            grads()
        return
    with pytest.warns(UserWarning, match="inference only") if model.phase.opt.workspace else _nothing():
        actual = grads()
    for name in expected:
        assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_fast_init_gives_the_same_parameters():
    torch.manual_seed(7)
    default = GPT(TINY, phase=OptConfig(init="default"))
    torch.manual_seed(7)
    fast = GPT(TINY, phase=OptConfig(init="fast"))
    for (name, a), (_, b) in zip(default.state_dict().items(), fast.state_dict().items()):
        assert torch.equal(a, b), name
    assert fast.lm_head.weight is fast.transformer.wte.weight
    assert not any(p.is_meta for p in fast.parameters())
    stds = {n: p.std().item() for n, p in default.named_parameters() if p.dim() == 2}
    assert abs(stds["transformer.wte.weight"] - 0.02) < 0.003


@each_phase
def test_a_model_pickles_in_every_phase(phase):
    """torch.save(model), copy.deepcopy and multiprocessing pickle the model: its phase goes as
    data (runtime.Phase) and is made ready again on the copy's parameters."""
    import io
    import pickle

    model = set_phase_or_skip(GPT(TINY).eval(), phase)
    idx = torch.randint(0, TINY.vocab_size, (2, 5))
    expected = model.generate(idx, 6)
    copy = pickle.loads(pickle.dumps(model))
    assert copy.phase.opt == model.phase.opt and copy.phase is not model.phase
    assert torch.equal(copy.generate(idx, 6), expected)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False).generate(idx, 6), expected)
