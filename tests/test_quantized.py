"""The `weights` switch: int8 weights (weight-only, per output channel) on the linear layers
and the lm head. Not the reference up to float rounding, so bounded here: logits, greedy
tokens and validation loss against reference on a tiny trained-free shape, and the exactness
of everything around it (fp32 parameters untouched, requantized after an edit)."""
import pytest
import torch
from torch.testing import assert_close

from smallmind_torch import GPT, OptConfig
from smallmind_torch.config import MAX_CANDIDATES
from smallmind_torch.study.quantized import weight_format_accuracy

from helpers import TINY, allocations, load_experiment, ops_binding_or_skip

ops_binding_or_skip("_linear_q8")
INT8 = MAX_CANDIDATES["custom ops"].replace(weights="int8")
INT8_FUSED = MAX_CANDIDATES["fused decode"].replace(weights="int8")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(TINY).eval()


@pytest.mark.parametrize("phase", [INT8, INT8_FUSED, INT8.replace(workspace=False, kv_cache=False),
                                   OptConfig(matmul="custom", weights="int8")],
                         ids=["custom-ops", "fused-decode", "allocating", "reference+int8"])
def test_int8_logits_stay_close_to_reference(model, phase):
    idx = torch.randint(0, TINY.vocab_size, (2, 9))
    with torch.inference_mode():
        expected = model(idx)
        model.set_phase(phase)
        got = model(idx)
    # per-channel int8 moves each weight by at most half a step (max |w| / 254 of its row)
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()
    assert not torch.equal(got, expected)  # the int8 path really ran


def test_accuracy_figures_are_bounded(model):
    val = torch.randint(0, TINY.vocab_size, (4000,))
    acc = weight_format_accuracy(model, INT8, val_data=val, val_batches=3, batch_size=2)
    assert 0 < acc.max_abs_logit_diff < 0.05
    assert acc.logit_diff_quantiles["p50"] <= acc.logit_diff_quantiles["p99"] <= acc.max_abs_logit_diff
    assert abs(acc.val_loss_change) < 0.02  # nats
    assert set(acc.greedy_agreement) == {"50", "200"}
    assert all(0.0 <= a <= 1.0 for a in acc.greedy_agreement.values())
    assert model.opt == OptConfig()  # left in reference


def test_switching_back_gives_the_exact_model_and_the_state_dict_stays_fp32(model):
    idx = torch.randint(0, TINY.vocab_size, (1, 7))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        expected = model(idx)
        model.set_phase(INT8)
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


@pytest.mark.parametrize("phase", [INT8, INT8_FUSED], ids=["custom-ops", "fused-decode"])
def test_an_edited_weight_is_quantized_again(model, phase):
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


def test_an_edited_weight_changes_the_logits(model):
    idx = torch.randint(0, TINY.vocab_size, (1, 7))
    model.set_phase(INT8)
    with torch.inference_mode():
        first = model(idx)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.mul_(2.0)  # in place: a new version
    with torch.inference_mode():
        second = model(idx)
    twin = GPT(TINY).eval()
    twin.load_state_dict(model.state_dict())
    twin.set_phase(INT8)
    with torch.inference_mode():
        assert torch.equal(second, twin(idx))
    assert not torch.equal(first, second)


def test_training_with_int8_weights_is_refused(model):
    model.set_phase(OptConfig(matmul="custom", weights="int8"))
    with pytest.raises(RuntimeError, match="weights='int8' is for inference"):
        model(torch.randint(0, TINY.vocab_size, (1, 4)))


@pytest.mark.parametrize("changes, match", [
    (dict(weights="int8"), "needs matmul='custom'"),
    (dict(weights="int8", matmul="custom", compile="inductor"), "compile"),
    (dict(weights="int4"), "allowed: \\['fp32', 'int8'\\]"),
])
def test_bad_combinations_are_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        OptConfig(**changes)


@pytest.mark.parametrize("phase", [INT8, INT8_FUSED], ids=["custom-ops", "fused-decode"])
def test_a_decode_step_allocates_what_the_fp32_step_does(model, phase):
    # the int8 linear writes into the workspace (linear_q8_out) like the fp32 one
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


def test_the_experiment_prints_speed_and_accuracy(tmp_path, capsys):
    assert load_experiment("quantized").main(["--shapes", "seed", "--threads", "1", "--runs", "1", "--new-tokens", "3",
                            "--checkpoint", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "int8 weights (fused decode)" in out and "x fp32" in out
    assert "greedy tokens equal over 200" in out and "validation loss: fp32" in out
