"""One model used from two threads or by interleaved streams: correct tokens or a clear error,
never silently wrong tokens; what public methods return stays valid."""
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from smallmind_torch import GPT, ModelConfig, presets

from helpers import set_phase_or_skip

CONFIG = ModelConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=64, block_size=24)
INTERRUPTED = "the model was used by another call since this stream's last step"


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    model = GPT(CONFIG).eval()
    with torch.no_grad():  # non-flat logits, so a corrupted cache shows in the tokens
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.state_dict()


def _model(weights, phase):
    model = GPT(CONFIG).eval()
    model.load_state_dict(weights)
    return set_phase_or_skip(model, phase)


def _run_threads(*targets):
    results, errors = [None] * len(targets), []
    start = threading.Barrier(len(targets))

    def run(i, fn):
        start.wait()
        try:
            results[i] = fn()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return results, errors


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(phase=st.sampled_from(presets()), lengths=st.tuples(st.integers(1, 30), st.integers(1, 30)),
       batches=st.tuples(st.integers(1, 2), st.integers(1, 2)), new=st.integers(1, 40))
def test_two_threads_generating_on_one_model_get_single_threaded_tokens(weights, phase, lengths,
                                                                        batches, new):
    model = _model(weights, phase)
    g = torch.Generator().manual_seed(sum(lengths) + new)
    prompts = [torch.randint(0, CONFIG.vocab_size, (b, n), generator=g) for b, n in zip(batches, lengths)]
    expected = [model.generate(p, new) for p in prompts]
    results, errors = _run_threads(*[lambda p=p: model.generate(p, new) for p in prompts])
    assert not errors, errors
    for got, want in zip(results, expected):
        assert torch.equal(got, want)


@pytest.mark.parametrize("phase", presets())
def test_an_interleaved_call_stops_an_open_stream_with_a_clear_error(weights, phase):
    model = _model(weights, phase)
    a, b = torch.tensor([[1, 2, 3]]), torch.tensor([[9, 8, 7, 6, 5]])
    expected_b = model.generate(b, 4)
    stream = model.generate_stream(a, 6)
    next(stream)
    assert torch.equal(model.generate(b, 4), expected_b)  # the other call is right
    if model.phase.opt.kv_cache:  # it wrote the cache this stream was reading
        with pytest.raises(RuntimeError, match=INTERRUPTED):
            next(stream)
    else:  # no cache: nothing of the stream's was touched, it goes on correctly
        expected_a = model.generate(a, 6)
        stream = model.generate_stream(a, 6)
        first = next(stream)
        model.generate(b, 4)
        assert torch.equal(torch.cat([a, first, *stream], 1), expected_a)


@pytest.mark.parametrize("phase", ["reference", "phase1", "phase2", "max"])
def test_set_phase_while_a_stream_is_open_is_a_clear_error(weights, phase):
    model = _model(weights, phase)
    stream = model.generate_stream(torch.tensor([[1, 2, 3]]), 5)
    next(stream)
    model.set_phase("reference" if phase != "reference" else "phase1")
    with pytest.raises(RuntimeError, match=INTERRUPTED):
        next(stream)


@pytest.mark.parametrize("phase", ["phase2", "max"])
def test_two_threads_streaming_on_one_model_are_right_or_refused(weights, phase):
    model = _model(weights, phase)
    prompts = [torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5]])]
    expected = [model.generate(p, 20)[:, p.size(1):] for p in prompts]

    def stream(p):
        return torch.cat(list(model.generate_stream(p, 20)), 1)

    for _ in range(5):
        results, errors = _run_threads(*[lambda p=p: stream(p) for p in prompts])
        assert all(INTERRUPTED in str(e) for e in errors), errors
        for got, want in zip(results, expected):
            assert got is None or torch.equal(got, want)


@pytest.mark.parametrize("phase", ["phase2", "phase3", "max"])
def test_returned_logits_stay_valid_after_the_next_call(weights, phase):
    model = _model(weights, phase)
    first = model.prefill(torch.tensor([[1, 2, 3]]))
    kept = first.clone()
    second = model.decode_one_token(torch.tensor([[4]]))
    kept_second = second.clone()
    model.decode_one_token(torch.tensor([[5]]))
    with torch.no_grad():
        full = model(torch.tensor([[1, 2, 3, 4, 5]]))
        model(torch.tensor([[7, 7]]))
    assert torch.equal(first, kept) and torch.equal(second, kept_second)
    assert not torch.equal(first, full[:, -1])  # they really were different logits
