"""The weight formats' scoreboard (study/measure/quality.py over divergence.py): teacher-forced
perplexity, KL divergence, top token and delta p against fp32 reference; its math against a
direct float64 computation; results.json round trip and the report's table; and max-int8's
quality bound in tuning.py (config.MAX_INT8_MEAN_KL)."""
import json
import math

import pytest
import torch

from smallmind_torch import GPT, OptConfig, tuning, weight_formats
from smallmind_torch.config import MAX_INT8_CANDIDATES, MAX_INT8_MEAN_KL
from smallmind_torch.divergence import position_scores, teacher_forced_scores, windows_of
from smallmind_torch.study.measure.quality import format_quality, random_stream
from smallmind_torch.study.report.markdown import markdown_report
from smallmind_torch.study.results import FormatQuality, QuantizedResult, StudyResult

from helpers import TINY, measure_max_as_if_quiet

INT8 = OptConfig(weights="int8")  # the library's GEMM on the int8 weights: no custom op
W8A8 = OptConfig(weights="w8a8")
# candidates of max-int8 without a custom op: the library's SDPA, the KV cache, the workspace
INT8_SDPA = MAX_INT8_CANDIDATES["int8 sdpa + kv cache"]
W8A8_SDPA = INT8_SDPA.replace(weights="w8a8")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(TINY).eval()


@pytest.fixture(scope="module")
def sharp_model():
    """Trained-like: a random model's next-token distributions are nearly uniform, so that
    every format's KL is ~0; a 30x ln_f gain makes them as peaked as a trained model's."""
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(30)
    return model


@pytest.fixture(scope="module")
def tokens():
    return random_stream(TINY, 3)


def _coarse(quantize, step):
    """`quantize` (weights or rows to int8) rounded to multiples of `step` int8 levels."""
    def coarse(x):
        q, scale = quantize(x)
        return (torch.round(q.float() / step) * step).clamp(-127, 127).to(torch.int8), scale
    return coarse


def test_reference_against_itself_is_perfect(model, tokens):
    q = format_quality(model, "reference", tokens, batch_size=2)
    assert (q.positions, q.windows, q.block_size) == (3 * TINY.block_size, 3, TINY.block_size)
    assert q.kl_mean == q.kl_median == q.kl_p99 == q.kl_max == q.kl_mean_se == 0
    assert q.same_top_percent == 100 and set(q.delta_p.values()) == {0.0}
    assert q.ppl == q.ppl_reference and q.delta_nll == q.delta_nll_se == 0
    assert model.phase.opt == OptConfig()  # the phase is restored


def test_a_format_against_fp32_has_a_divergence_and_finite_errors(model, tokens):
    model.set_phase("phase1")
    q = format_quality(model, INT8, tokens, block_size=16, batch_size=4, max_windows=5)
    assert model.phase.name == "phase1"
    model.set_phase("reference")
    assert (q.positions, q.windows) == (5 * 16, 5)
    assert q.kl_mean > 0 and q.kl_max >= q.kl_p99 >= q.kl_median >= 0
    assert all(math.isfinite(v) and v > 0 for v in (q.kl_mean_se, q.nll_se, q.nll_reference_se,
                                                    q.delta_nll_se, q.ppl_se, q.ppl_reference_se))
    assert q.delta_p["rms"] > 0 and q.delta_p["p1"] <= q.delta_p["p50"] <= q.delta_p["p99"]


def test_the_summary_is_the_direct_computation_over_the_positions(model, tokens):
    q = format_quality(model, W8A8, tokens, batch_size=2)
    s = teacher_forced_scores(model, {"w8a8": W8A8}, windows_of(tokens, TINY.block_size),
                              batch_size=3)["w8a8"]
    n = len(s["kl"])
    se = lambda v: float(v.std() / math.sqrt(n))
    diff = s["nll"] - s["nll_reference"]
    p_change = torch.exp(-s["nll"]) - torch.exp(-s["nll_reference"])
    assert q.positions == n
    assert q.ppl_reference == pytest.approx(math.exp(float(s["nll_reference"].mean())), rel=1e-12)
    assert q.ppl == pytest.approx(math.exp(float(s["nll"].mean())), rel=1e-12)
    assert q.ppl_se == pytest.approx(q.ppl * se(s["nll"]), rel=1e-9)
    assert q.delta_nll == pytest.approx(float(diff.mean()), abs=1e-12)
    assert q.delta_nll_se == pytest.approx(se(diff), rel=1e-9)
    assert q.kl_mean == pytest.approx(float(s["kl"].mean()), rel=1e-9)
    assert q.kl_median == pytest.approx(float(torch.quantile(s["kl"], 0.5)), rel=1e-9)
    assert q.kl_p99 == pytest.approx(float(torch.quantile(s["kl"], 0.99)), rel=1e-9)
    assert q.delta_p["p5"] == pytest.approx(float(torch.quantile(p_change, 0.05)), rel=1e-9)
    assert q.delta_p["rms"] == pytest.approx(float(p_change.square().mean().sqrt()), rel=1e-9)
    assert q.same_top_percent == pytest.approx(100 * float(s["same_top"].double().mean()))


def test_the_math_on_hand_made_distributions():
    """Two positions over 3 tokens, against KL, NLL and argmax written out in float64."""
    ref = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]])
    fmt = torch.tensor([[1.0, 2.5, 2.5], [0.0, 0.5, -1.0]])
    targets = torch.tensor([2, 1])
    s = position_scores(ref, fmt, targets)

    def softmax(row):
        z = sum(math.exp(v) for v in row)
        return [math.exp(v) / z for v in row]
    for i in range(2):
        p, q = softmax(ref[i].tolist()), softmax(fmt[i].tolist())
        kl = sum(a * math.log(a / b) for a, b in zip(p, q))
        assert float(s["kl"][i]) == pytest.approx(kl, rel=1e-12)
        assert float(s["nll_reference"][i]) == pytest.approx(-math.log(p[targets[i]]), rel=1e-12)
        assert float(s["nll"][i]) == pytest.approx(-math.log(q[targets[i]]), rel=1e-12)
    assert s["same_top"].tolist() == [False, False]  # row 0: a tie, the first index; row 1
    assert s["kl"].dtype == torch.float64


def test_bad_input_is_refused_in_one_line(model, tokens):
    with pytest.raises(ValueError, match="block_size must be in"):
        format_quality(model, INT8, tokens, block_size=TINY.block_size + 1)
    with pytest.raises(ValueError, match="need at least block_size"):
        format_quality(model, INT8, tokens[:10])
    with pytest.raises(ValueError, match="1-D tensor"):
        format_quality(model, INT8, tokens.view(1, -1))


def test_int8_on_a_trained_like_model_is_close_and_coarser_steps_are_worse(
        sharp_model, tokens, monkeypatch):
    fine = format_quality(sharp_model, INT8, tokens)
    assert fine.kl_mean < MAX_INT8_MEAN_KL / 10 and fine.same_top_percent > 90
    monkeypatch.setattr(weight_formats, "quantize_per_channel",
                        _coarse(weight_formats.quantize_per_channel, 8))
    coarse = format_quality(sharp_model, INT8, tokens)
    assert coarse.kl_mean > 10 * fine.kl_mean and coarse.delta_p["rms"] > fine.delta_p["rms"]


def test_the_scoreboard_goes_through_results_json_into_the_report(model, tokens):
    quality = {"int8 (test)": format_quality(model, INT8, tokens)}
    result = QuantizedResult([], {}, {"quality": {"set": "the test's random ids", "windows": 3,
                                                  "block_size": 32, "positions": 96}}, quality)
    again = QuantizedResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result and isinstance(again.quality["int8 (test)"], FormatQuality)
    study = StudyResult(model_config=vars(TINY), num_parameters=model.num_parameters(),
                        settings={"new_tokens": 6, "prompt_len": 4, "runs": 1, "tolerance": 1e-4},
                        env={}, machine=None, phases={}, peers={}, quantized=result)
    text = markdown_report(StudyResult.from_dict(json.loads(json.dumps(study.to_dict()))))
    q = quality["int8 (test)"]
    assert "| format | positions | PPL fp32 ± SE | PPL format ± SE |" in text
    assert (f"| int8 (test) | 96 | {q.ppl_reference:.3f} ± {q.ppl_reference_se:.3f} | "
            f"{q.ppl:.3f} ± {q.ppl_se:.3f} |") in text
    assert "the test's random ids: 3 non-overlapping windows of 32 tokens, 96 positions" in text


def test_max_int8_rejects_a_candidate_over_the_quality_bound(sharp_model, monkeypatch, tmp_path,
                                                             capsys):
    """w8a8 with every activation scale 1.5x too large passes its own reference check (the
    reference runs the same rounding) but not the bound; weight-only int8 passes both."""
    measure_max_as_if_quiet(monkeypatch)
    monkeypatch.setattr(tuning, "cache_file", lambda: tmp_path / "max.json")
    real = weight_formats.quantize_rows
    monkeypatch.setattr(weight_formats, "quantize_rows",
                        lambda x: (lambda q, s: (q, 1.5 * s))(*real(x)))
    candidates = {"broken w8a8": W8A8_SDPA, "int8": INT8_SDPA}
    assert tuning.measure(sharp_model, {"broken w8a8": W8A8_SDPA})["broken w8a8"] is not None
    choice = tuning.choose(sharp_model, candidates, "max-int8")
    assert choice.label == "int8" and choice.times_ms["broken w8a8"] is None
    assert "broken w8a8 over the quality bound" in choice.describe()
    assert "max-int8: not broken w8a8: over the quality bound" in capsys.readouterr().err
    (entry,) = json.loads((tmp_path / "max.json").read_text()).values()
    assert entry["mean_kl"]["broken w8a8"] > MAX_INT8_MEAN_KL >= entry["mean_kl"]["int8"]
    assert list(entry["over_quality_bound"]) == ["broken w8a8"]
    cached = tuning.choose(sharp_model, candidates, "max-int8")
    assert cached.source == "cached" and cached.describe() == choice.describe().replace(
        "measured now", "cached")


def test_a_cache_entry_without_the_bound_is_measured_again(sharp_model, monkeypatch, tmp_path):
    measure_max_as_if_quiet(monkeypatch)
    path = tmp_path / "max.json"
    monkeypatch.setattr(tuning, "cache_file", lambda: path)
    candidates = {"w8a8": W8A8_SDPA, "int8": INT8_SDPA}
    path.write_text(json.dumps({tuning._key(sharp_model, "max-int8"): {
        "chosen": "w8a8", "times_ms": {"w8a8": 1.0, "int8": 2.0}}}))
    assert tuning.choose(sharp_model, candidates, "max-int8").source == "measured now"
    (entry,) = json.loads(path.read_text()).values()
    assert set(entry["mean_kl"]) == {"w8a8", "int8"} and entry["over_quality_bound"] == {}
