"""torch.compile as a form: the `compiled` preset gives the reference's logits and tokens, the
decode step compiles once and serves every position (no recompilation per token), and the
study reports compile time apart from speed."""
import pytest
import torch

from smallmind_torch import GPT, OptConfig
from smallmind_torch.compiled import compiled_graphs
from smallmind_torch.study import BenchSettings
from smallmind_torch.study.measure.preset import measure_preset

from helpers import TINY


@pytest.fixture
def inductor(monkeypatch):
    monkeypatch.setenv("SMALLMIND_COMPILE_BACKEND", "inductor")


@pytest.mark.slow
def test_inductor_matches_reference_without_recompiling_per_token(inductor):
    torch.set_num_threads(1)
    model = GPT(TINY).eval()
    idx = torch.randint(0, TINY.vocab_size, (2, 5))
    with torch.no_grad():
        expected_logits = model(idx)
    expected = model.generate(idx, TINY.block_size + 4)  # past block_size: a re-prefill too
    model.set_phase("compiled")
    assert torch.equal(model.generate(idx, 3), expected[:, :8])  # compiles prefill and decode
    graphs = compiled_graphs()
    within_cache = TINY.block_size - 5
    assert torch.equal(model.generate(idx, within_cache), expected[:, :5 + within_cache])
    assert compiled_graphs() == graphs  # every position of the cache: the same graphs
    # past block_size (a re-prefill of a full window) and a full forward: compiled once each
    assert torch.equal(model.generate(idx, TINY.block_size + 4), expected)
    with torch.no_grad():
        torch.testing.assert_close(model(idx), expected_logits)
    graphs = compiled_graphs()
    assert torch.equal(model.generate(idx, TINY.block_size + 4), expected)
    assert compiled_graphs() == graphs


def test_the_study_reports_compile_time_and_recompiles():
    model = GPT(TINY).eval()
    r = measure_preset(model, "compiled", BenchSettings.tiny(profile=False))
    assert r.status == "ok", r.reason
    assert r.compile_s > 0 and r.graphs_compiled >= 2 and r.recompiles == 0


def test_compile_excludes_the_workspace_and_fused_decode():
    with pytest.raises(ValueError, match="compile='inductor' needs workspace=False"):
        OptConfig(compile="inductor", workspace=True)
    with pytest.raises(ValueError, match="compile='max-autotune' needs"):
        OptConfig(compile="max-autotune", kv_cache=True, workspace=True, fused_decode=True)


def test_compiled_training_gradients_match(inductor):
    pytest.importorskip("torch._inductor")
    model = GPT(TINY)
    idx = torch.randint(0, TINY.vocab_size, (2, 7))

    def grads():
        model.zero_grad()
        model(idx).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    expected = grads()
    model.set_phase(OptConfig(compile="inductor"))
    for got, want in zip(grads(), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_max_autotune_works_on_cpu(inductor):
    model = GPT(TINY).eval()
    idx = torch.randint(0, TINY.vocab_size, (1, 5))
    expected = model.generate(idx, 12)
    model.set_phase(OptConfig(kv_cache=True, compile="max-autotune"))
    assert torch.equal(model.generate(idx, 12), expected)


def test_past_the_recompile_limit_the_decode_step_runs_uncompiled():
    from smallmind_torch import ModelConfig

    # config.patch, not monkeypatch: undoing a monkeypatch deletes the attribute, and dynamo's
    # config then hides it from every later compile in the process.
    with torch._dynamo.config.patch(recompile_limit=1):
        for config in (TINY, ModelConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=32, block_size=16)):
            model = GPT(config).eval()
            idx = torch.randint(0, config.vocab_size, (1, 4))
            expected = model.generate(idx, 6)
            model.set_phase("compiled")
            with pytest.warns(UserWarning, match="recompile limit") if config is not TINY else _nothing():
                assert torch.equal(model.generate(idx, 6), expected)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.slow
def test_cpp_wrapper_matches_reference(inductor):
    """Inductor's kernels called from its generated C++ wrapper instead of Python."""
    model = GPT(TINY).eval()
    idx = torch.randint(0, TINY.vocab_size, (1, 5))
    expected = model.generate(idx, 12)
    model.set_phase(OptConfig(kv_cache=True, compile="cpp-wrapper"))
    assert torch.equal(model.generate(idx, 12), expected)


@pytest.mark.slow
def test_aot_inductor_package_matches_reference(inductor):
    """The decode step as an AOTInductor package: the reference's tokens through the KV cache
    it writes in place."""
    model = GPT(TINY).eval()
    idx = torch.randint(0, TINY.vocab_size, (1, 5))
    expected = model.generate(idx, 12)
    model.set_phase(OptConfig(kv_cache=True, compile="aot-inductor"))
    assert torch.equal(model.generate(idx, 12), expected)


def test_aot_inductor_form_exports_the_decode_step_with_the_caches_as_inputs():
    """Without Inductor (the tests' backend), the exported program itself runs: the same graph,
    caches written in place, every batch size its own export. The package holds the weights as
    constants, so editing a parameter in place makes a new one (and the reference's new
    tokens)."""
    model = GPT(TINY).eval()
    idx = torch.randint(0, TINY.vocab_size, (2, 5))
    expected = [model.generate(idx[:b], TINY.block_size + 3) for b in (1, 2)]  # + a re-prefill
    model.set_phase(OptConfig(kv_cache=True, compile="aot-inductor"))
    got = [model.generate(idx[:b], TINY.block_size + 3) for b in (1, 2)]
    assert all(torch.equal(a, e) for a, e in zip(got, expected))
    assert sorted(model.phase.forms.decode.runners) == [1, 2]
    with torch.no_grad():  # in place: ln_f's output leans towards token 7 (its logit + 100)
        w7 = model.transformer.wte.weight[7]
        model.transformer.ln_f.bias.copy_(100 * w7 / w7.square().sum())
    changed = model.generate(idx[:1], 8)
    with model.using("reference"):
        assert torch.equal(changed, model.generate(idx[:1], 8))
    assert not torch.equal(changed, expected[0][:, :13])  # the edit changed the tokens
    with pytest.raises(ValueError, match="compile='aot-inductor' needs .*kv_cache=True"):
        OptConfig(compile="aot-inductor")


@pytest.mark.slow
def test_freezing_folds_the_kv_cache_into_constants(inductor):
    """The pitfall docs/study.md explains: Inductor's `freezing` turns the tensors a compiled
    function reads as attributes into constants when it compiles, the KV cache included, so
    the `compiled` preset under it attends to a cache that no longer follows its writes and its
    greedy tokens leave the reference's. The compile forms never freeze; the AOT package takes
    the caches as inputs."""
    model = GPT(TINY).eval()
    idx = torch.randint(0, TINY.vocab_size, (1, 16))
    expected = model.generate(idx, 20)
    with torch._inductor.config.patch(freezing=True):
        model.set_phase("compiled")
        frozen = model.generate(idx, 20)
    assert not torch.equal(frozen, expected)
    model.set_phase("compiled")  # the same preset, not frozen: the reference's tokens
    assert torch.equal(model.generate(idx, 20), expected)
