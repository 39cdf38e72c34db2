"""The `weights` switch: int8 (weight-only, per output channel), w8a8 (int8 activations too) and
bf16 weights on the linear layers and the lm head, and the `max-int8` preset. Not the reference
up to float rounding, so
bounded here against fp32 reference: logits, greedy tokens and validation loss on a tiny shape;
and the exactness of everything around them (each format's naive form against its fast one,
fp32 parameters untouched, a new copy after an edit)."""
import pytest
import torch
from torch.testing import assert_close

from smallmind_torch import GPT, ModelConfig, OptConfig, ops, phases
from smallmind_torch.config import MAX_CANDIDATES, MAX_INT8_CANDIDATES, check_tolerance, reference_for
from smallmind_torch.study.measure.quantized import weight_format_accuracy
from smallmind_torch.weight_formats import decode_weight_bytes

from helpers import TINY, allocations, load_experiment, ops_binding_or_skip

ops_binding_or_skip("_linear_q8")
INT8 = MAX_CANDIDATES["custom ops"].replace(weights="int8")
INT8_FUSED = MAX_CANDIDATES["fused decode"].replace(weights="int8")
BF16 = MAX_CANDIDATES["custom ops"].replace(weights="bf16")
W8A8 = MAX_CANDIDATES["custom ops"].replace(weights="w8a8")
W8A8_FUSED = MAX_CANDIDATES["fused decode"].replace(weights="w8a8")
FAST = {"int8-custom-ops": INT8, "int8-fused-decode": INT8_FUSED, "bf16-custom-ops": BF16,
        "w8a8-custom-ops": W8A8, "w8a8-fused-decode": W8A8_FUSED}
# how far a format may move the logits of this tiny random model: half an int8 step of each
# weight (max |w| / 254 of its row), w8a8 also of each activation; bf16's relative rounding of
# weights and activations (2^-9)
BOUND = {"int8": 0.05, "w8a8": 0.08, "bf16": 0.02}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(TINY).eval()


@pytest.mark.parametrize("phase", [INT8, INT8_FUSED, INT8.replace(workspace=False, kv_cache=False),
                                   OptConfig(matmul="custom", weights="int8"), BF16,
                                   OptConfig(weights="bf16"), OptConfig(weights="int8"), W8A8,
                                   W8A8_FUSED, OptConfig(weights="w8a8")],
                         ids=["int8-custom-ops", "int8-fused-decode", "int8-allocating",
                              "int8-reference+custom-matmul", "bf16-custom-ops", "bf16-reference",
                              "int8-reference", "w8a8-custom-ops", "w8a8-fused-decode",
                              "w8a8-reference"])
def test_logits_stay_close_to_fp32_reference(model, phase):
    idx = torch.randint(0, TINY.vocab_size, (2, 9))
    with torch.inference_mode():
        expected = model(idx)
        model.set_phase(phase)
        got = model(idx)
    assert (got - expected).abs().max() < BOUND[phase.weights] * expected.abs().max()
    assert not torch.equal(got, expected)  # the format really ran


@pytest.mark.parametrize("phase", [INT8, INT8_FUSED], ids=["custom-ops", "fused-decode"])
def test_int8_kernels_give_the_int8_reference(model, phase):
    """reference's forms on the dequantized int8 weights (the naive form) against the kernels:
    the same up to float rounding, logits and greedy tokens (what max-int8 is checked by)."""
    idx = torch.randint(0, TINY.vocab_size, (2, 5))
    model.set_phase(phase)
    with torch.inference_mode():
        got, tokens = model(idx), model.generate(idx, 40)  # past block_size: re-prefill
        model.set_phase(reference_for(phase))
        assert_close(got, model(idx))
    assert torch.equal(tokens, model.generate(idx, 40))


@pytest.mark.parametrize("phase", [W8A8, W8A8_FUSED], ids=["custom-ops", "fused-decode"])
def test_w8a8_kernels_give_the_w8a8_reference(model, phase):
    """As for int8, but an activation that lands on the other side of a rounding boundary
    (our LayerNorm and attention round differently from PyTorch's) moves the logits by an
    int8 step: close, and the same tokens on this model."""
    idx = torch.randint(0, TINY.vocab_size, (2, 5))
    model.set_phase(phase)
    with torch.inference_mode():
        got, tokens = model(idx), model.generate(idx, 20)
        model.set_phase(reference_for(phase))
        expected = model(idx)
    assert (got - expected).abs().max() < 0.02 * expected.abs().max()
    assert ((got - expected).abs() <= 1e-4).float().mean() > 0.9
    assert torch.equal(tokens, model.generate(idx, 20))


def test_bf16_kernel_gives_the_bf16_reference(model):
    # only the linear layers differ from reference_for: the same activations are rounded
    idx = torch.randint(0, TINY.vocab_size, (2, 5))
    with torch.inference_mode():
        got = model.set_phase(OptConfig(matmul="custom", weights="bf16"))(idx)
        expected = model.set_phase(OptConfig(weights="bf16"))(idx)
    assert_close(got, expected, rtol=1e-4, atol=2e-3)  # a rounding flip moves a logit ~1e-3


def test_bf16_at_the_seed_shape_is_within_its_stated_tolerance():
    """bf16 rounds the activations: at the seed shape a rounding flip moves logits by ~5e-3,
    past float rounding's 1e-4 but within config.CHECK_TOLERANCE["bf16"], tokens equal."""
    torch.manual_seed(0)
    model = GPT(ModelConfig()).eval()
    idx = torch.randint(0, 512, (1, 128))
    opt = MAX_CANDIDATES["custom ops"].replace(weights="bf16")
    with torch.inference_mode():
        got = model.set_phase(opt)(idx)
        expected = model.set_phase(reference_for(opt))(idx)
    assert float((got - expected).abs().max()) <= check_tolerance(opt)
    prompt = idx[:, :16]
    assert torch.equal(model.set_phase(opt).generate(prompt, 20),
                       model.set_phase(reference_for(opt)).generate(prompt, 20))


@pytest.mark.parametrize("isa", ["avx2", "scalar"])
def test_bf16_runs_where_there_are_no_native_bf16_dot_products(model, isa):
    """Without AVX512_BF16 (here: another ISA selected) the op widens each bf16 to float32."""
    idx = torch.randint(0, TINY.vocab_size, (2, 5))
    with torch.inference_mode():
        expected = model.set_phase(OptConfig(matmul="custom", weights="bf16"))(idx)
        with ops.use_isa(isa):
            got = model.set_phase(OptConfig(matmul="custom", weights="bf16"))(idx)
    assert_close(got, expected, rtol=1e-4, atol=2e-3)


def test_max_int8_is_an_int8_candidate_checked_against_the_int8_reference(model):
    model.set_phase("max-int8")
    assert model.phase.opt in MAX_INT8_CANDIDATES.values() and model.phase.opt.weights == "int8"
    assert model.phase.description.startswith("max-int8 = int8 fused decode")  # first: not measured


def test_max_int8_without_custom_ops_falls_back_to_the_library(monkeypatch):
    def boom():
        raise ops.CustomOpsUnavailable("no compiler (simulated)")

    monkeypatch.setattr(ops, "load_all", boom)
    phase = phases.decide("max-int8")
    assert phase.opt == MAX_INT8_CANDIDATES["int8 sdpa + kv cache"]
    assert "simulated" in phase.description


def test_max_int8_on_another_dtype_runs_the_library_form():
    model = GPT(TINY).to(torch.float64).eval().set_phase("max-int8")
    assert not model.phase.opt.needs_custom_ops and model.phase.opt.weights == "int8"
    idx = torch.randint(0, TINY.vocab_size, (1, 5))
    with torch.inference_mode():
        assert model(idx).dtype == torch.float64


@pytest.mark.parametrize("fmt", ["int8", "bf16", "w8a8"])
def test_accuracy_figures_are_bounded(model, fmt):
    val = torch.randint(0, TINY.vocab_size, (4000,))
    prompts = {"one": torch.tensor([[1, 2, 3]]), "other": torch.tensor([[7, 5]])}
    acc = weight_format_accuracy(model, FAST[f"{fmt}-custom-ops"], val_data=val, val_batches=3,
                                 batch_size=2, prompts=prompts)
    assert 0 < acc.max_abs_logit_diff < BOUND[fmt]
    assert acc.logit_diff_quantiles["p50"] <= acc.logit_diff_quantiles["p99"] <= acc.max_abs_logit_diff
    assert abs(acc.val_loss_change) < 0.02  # nats
    assert set(acc.greedy_agreement) == set(acc.first_divergence) == {"one", "other"}  # per prompt
    for name in prompts:
        assert set(acc.greedy_agreement[name]) == {"50", "200"}
        assert all(0.0 <= a <= 1.0 for a in acc.greedy_agreement[name].values())
        assert all(0 <= i <= int(n) for n, i in acc.first_divergence[name].items())
    assert model.phase.opt == OptConfig()  # its phase restored: reference


def test_greedy_agreement_of_reference_with_itself_is_complete(model):
    acc = weight_format_accuracy(model, "reference")
    assert acc.greedy_agreement == {"random ids": {"50": 1.0, "200": 1.0}}
    assert acc.first_divergence == {"random ids": {"50": 50, "200": 200}}


@pytest.mark.parametrize("phase", list(FAST.values()), ids=list(FAST))
def test_switching_back_gives_the_exact_model_and_the_state_dict_stays_fp32(model, phase):
    idx = torch.randint(0, TINY.vocab_size, (1, 7))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        expected = model(idx)
        model.set_phase(phase)
        model(idx)
        model.generate(idx, 5)
        model.set_phase("reference")
        assert torch.equal(model(idx), expected)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(after[k].dtype == torch.float32 and torch.equal(after[k], before[k]) for k in before)


def test_the_fused_int8_step_gives_the_tokens_of_the_int8_ops(model):
    idx = torch.randint(0, TINY.vocab_size, (2, 5))
    model.set_phase(INT8)
    expected = model.generate(idx, 40)  # past block_size: re-prefill included
    model.set_phase(INT8_FUSED)
    assert torch.equal(model.generate(idx, 40), expected)


@pytest.mark.parametrize("phase", list(FAST.values()), ids=list(FAST))
def test_an_edited_weight_gets_a_new_copy(model, phase):
    idx = torch.randint(0, TINY.vocab_size, (1, 7))
    model.set_phase(phase)
    expected = model.generate(idx, 6)
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)  # the tied lm head and embedding, in place
    twin = GPT(TINY).eval()
    twin.load_state_dict(model.state_dict())
    twin.set_phase(phase)
    got = model.generate(idx, 6)
    assert torch.equal(got, twin.generate(idx, 6))
    assert not torch.equal(got, expected)


@pytest.mark.parametrize("phase", [INT8, BF16, W8A8], ids=["int8", "bf16", "w8a8"])
def test_an_edited_weight_changes_the_logits(model, phase):
    idx = torch.randint(0, TINY.vocab_size, (1, 7))
    model.set_phase(phase)
    with torch.inference_mode():
        first = model(idx)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.mul_(2.0)  # in place: a new version
    with torch.inference_mode():
        second = model(idx)
    twin = GPT(TINY).eval()
    twin.load_state_dict(model.state_dict())
    twin.set_phase(phase)
    with torch.inference_mode():
        assert torch.equal(second, twin(idx))
    assert not torch.equal(first, second)


@pytest.mark.parametrize("fmt", ["int8", "bf16", "w8a8"])
@pytest.mark.parametrize("matmul", ["torch", "custom"])
def test_training_with_low_precision_weights_is_refused(model, fmt, matmul):
    model.set_phase(OptConfig(matmul=matmul, weights=fmt))
    with pytest.raises(RuntimeError, match=f"weights='{fmt}' is for inference"):
        model(torch.randint(0, TINY.vocab_size, (1, 4)))


@pytest.mark.parametrize("changes, match", [
    (dict(weights="int8", compile="inductor"), "compile"),
    (dict(weights="bf16", compile="inductor"), "compile"),
    (dict(weights="bf16", fused_decode=True, kv_cache=True, workspace=True), "fused_decode=False"),
    (dict(weights="w8a8", compile="max-autotune"), "compile"),
    (dict(weights="int4", compile="inductor"), "compile"),
    (dict(weights="int2"), "allowed: \\['fp32', 'int8', 'bf16', 'w8a8', 'int4'\\]"),
])
def test_bad_combinations_are_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        OptConfig(**changes)


@pytest.mark.parametrize("phase", [INT8, INT8_FUSED, BF16, W8A8, W8A8_FUSED],
                         ids=["int8", "int8-fused", "bf16", "w8a8", "w8a8-fused"])
def test_a_decode_step_allocates_what_the_fp32_step_does(model, phase):
    # the low-precision linears write into the workspace (their out-variants) like fp32's
    fp32 = phase.replace(weights="fp32")
    counts = []
    for opt in (fp32, phase):
        model.set_phase(opt)
        model.setup_caches(1)
        with torch.inference_mode():
            model.prefill(torch.randint(0, TINY.vocab_size, (1, 5)))
            token = torch.tensor([[3]])
            model.decode_step(token)  # warm-up
            counts.append(allocations(lambda: model.decode_step(token)))
    assert counts[1] == counts[0]


def test_decode_weight_bytes_count_each_format(model):
    fp32 = decode_weight_bytes(model)
    matrices = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)
                   and m is not model.lm_head) + model.lm_head.weight.numel()
    rows = sum(m.weight.size(0) for m in model.modules() if isinstance(m, torch.nn.Linear)
               and m is not model.lm_head) + model.lm_head.weight.size(0)
    assert decode_weight_bytes(model.set_phase(BF16)) == fp32 - 2 * matrices
    assert decode_weight_bytes(model.set_phase(INT8)) == fp32 - 3 * matrices + 4 * rows
    assert decode_weight_bytes(model.set_phase(W8A8)) == decode_weight_bytes(model)


def test_the_experiment_prints_speed_and_accuracy(tmp_path, capsys):
    assert load_experiment("quantized").main(["--shapes", "seed", "--threads", "1", "--runs", "1",
                                              "--new-tokens", "3", "--windows", "2",
                                              "--checkpoint", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "int8 (fused decode)" in out and "bf16 (custom ops)" in out and "x fp32" in out
    assert "w8a8 (fused decode)" in out
    assert "greedy tokens equal over 200" in out and "validation loss: fp32" in out
    assert "scoreboard against fp32 reference" in out and "256 positions" in out
    assert "mean KL ± SE (nats)" in out
