"""One `max`: phases.decide decides it for every caller, by device, dtype and whether the
custom ops build, and every caller says which configuration it was."""
import json

import pytest
import torch

from smallmind_torch import GPT, cli, ops, phases
from smallmind_torch.config import MAX_CANDIDATES

from helpers import TINY, measure_max_as_if_quiet


@pytest.fixture
def no_custom_ops(monkeypatch):
    def boom():
        raise ops.CustomOpsUnavailable("no compiler (simulated)")

    monkeypatch.setattr(ops, "load_all", boom)


def test_max_without_custom_ops_falls_back_and_says_why(no_custom_ops):
    phase = phases.decide("max")
    assert phase.opt == MAX_CANDIDATES["sdpa + kv cache"]
    assert phase.description.startswith("max = sdpa + kv cache")
    assert "simulated" in phase.description


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_max_picks_what_runs_for_the_dtype(dtype):
    model = GPT(TINY).to(dtype).eval()
    model.set_phase("max")
    assert not model.phase.opt.needs_custom_ops
    assert f"parameters are {dtype}" in model.phase.description
    idx = torch.randint(0, TINY.vocab_size, (1, 5))
    reference = GPT(TINY).to(dtype).eval()
    reference.load_state_dict(model.state_dict())
    assert torch.equal(model.generate(idx, 8), reference.generate(idx, 8))


def test_max_follows_to():
    model = GPT(TINY).eval().set_phase("max")
    model.to(torch.float64)
    assert not model.phase.opt.needs_custom_ops  # chosen again for the new dtype
    with torch.no_grad():
        model(torch.zeros(1, 3, dtype=torch.long))


@pytest.mark.parametrize("phase", ["phase2", "phase3"])
def test_custom_presets_on_another_dtype_fail_at_set_phase(phase):
    with pytest.raises(ops.CustomOpsUnavailable, match="float32 kernels"):
        GPT(TINY).to(torch.float64).set_phase(phase)


def _max_line(text):
    return next(line for line in text.splitlines() if "max = " in line).split("max = ", 1)[1]


@pytest.mark.parametrize("ops_built", [True, False], ids=["ops", "no-ops"])
def test_bench_and_profile_run_the_same_max(ops_built, request, tmp_path, capsys):
    if not ops_built:
        request.getfixturevalue("no_custom_ops")
    elif not ops.available():
        pytest.skip("custom ops unavailable here")
    common = ["--tiny", "--threads", "1"]
    assert cli.main(["bench", "--phases", "max", "--peers", "--no-machine", "--no-profile",
                     "--no-progress", *common]) == 0
    bench = _max_line(capsys.readouterr().out)
    assert cli.main(["profile", "--phase", "max", "--logdir", str(tmp_path), "--prompt-len", "4",
                     *common]) == 0
    profile = _max_line(capsys.readouterr().out)
    assert bench == profile
    assert bench.startswith("fused decode" if ops_built else "sdpa + kv cache")


def test_max_is_measured_once_then_cached(monkeypatch, tmp_path, capsys):
    from smallmind_torch import tuning

    if not ops.available():
        pytest.skip("custom ops unavailable here: only one candidate runs")
    measure_max_as_if_quiet(monkeypatch)
    monkeypatch.setattr(tuning, "cache_file", lambda: tmp_path / "max.json")
    model = GPT(TINY).eval()
    model.set_phase("max")
    assert "choosing max for this machine" in capsys.readouterr().err
    measured = model.phase
    assert "measured now" in measured.description
    times = json.loads((tmp_path / "max.json").read_text())
    (entry,) = times.values()
    assert set(entry["times_ms"]) == set(MAX_CANDIDATES)
    fastest = min((v, k) for k, v in entry["times_ms"].items() if v is not None)[1]
    assert entry["chosen"] == fastest and measured.opt == MAX_CANDIDATES[fastest]
    model.set_phase("max")  # the second time: from the cache, silently
    assert "cached" in model.phase.description and model.phase.opt == measured.opt
    assert capsys.readouterr().err == ""
    idx = torch.randint(0, TINY.vocab_size, (1, 5))
    assert torch.equal(model.generate(idx, 10), GPT.generate(model.set_phase("reference"), idx, 10))


def test_a_candidate_that_is_wrong_here_is_never_chosen(monkeypatch, tmp_path):
    from smallmind_torch import tuning

    if not ops.available():
        pytest.skip("custom ops unavailable here: only one candidate runs")
    measure_max_as_if_quiet(monkeypatch)
    monkeypatch.setattr(tuning, "cache_file", lambda: tmp_path / "max.json")
    real = tuning.measure

    def fused_is_wrong(model, candidates):
        times = real(model, candidates)
        return {k: (None if k == "fused decode" else v) for k, v in times.items()}

    monkeypatch.setattr(tuning, "measure", fused_is_wrong)
    model = GPT(TINY).eval().set_phase("max")
    assert model.phase.opt != MAX_CANDIDATES["fused decode"]
    assert "fused decode wrong" in model.phase.description


@pytest.mark.parametrize("block_size", [2, 8])
def test_max_is_measured_on_a_context_shorter_than_the_tuning_prompt(monkeypatch, tmp_path, block_size):
    from smallmind_torch import ModelConfig, tuning

    if not ops.available():
        pytest.skip("custom ops unavailable here: only one candidate runs")
    measure_max_as_if_quiet(monkeypatch)
    monkeypatch.setattr(tuning, "cache_file", lambda: tmp_path / "max.json")
    config = ModelConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=32, block_size=block_size)
    model = GPT(config).eval().set_phase("max")
    assert "measured now" in model.phase.description
    idx = torch.randint(0, 32, (1, 1))
    assert torch.equal(model.generate(idx, 5), GPT.generate(model.set_phase("reference"), idx, 5))


@pytest.mark.parametrize("entry", [
    {"chosen": "fused decode", "times_ms": list(MAX_CANDIDATES)},
    {"chosen": "fused decode", "times_ms": {k: "fast" for k in MAX_CANDIDATES}},
    {"chosen": "fused decode", "times_ms": {k: float("nan") for k in MAX_CANDIDATES}},
    {"chosen": "nope", "times_ms": {}},
    "not an entry",
], ids=["a list", "string times", "nan times", "unknown choice", "a string"])
def test_a_bad_cache_entry_is_measured_again_never_fatal(monkeypatch, tmp_path, entry, capsys):
    from smallmind_torch import tuning

    if not ops.available():
        pytest.skip("custom ops unavailable here: only one candidate runs")
    measure_max_as_if_quiet(monkeypatch)
    path = tmp_path / "max.json"
    monkeypatch.setattr(tuning, "cache_file", lambda: path)
    model = GPT(TINY).eval()
    path.write_text(json.dumps({tuning._key(model, "max"): entry}))
    assert "measured now" in model.set_phase("max").phase.description
    (fresh,) = json.loads(path.read_text()).values()
    assert set(fresh["times_ms"]) == set(MAX_CANDIDATES)


def test_a_deeply_nestedcache_file_is_measured_again(monkeypatch, tmp_path):
    from smallmind_torch import tuning

    if not ops.available():
        pytest.skip("custom ops unavailable here: only one candidate runs")
    measure_max_as_if_quiet(monkeypatch)
    path = tmp_path / "max.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    monkeypatch.setattr(tuning, "cache_file", lambda: path)
    assert "measured now" in GPT(TINY).eval().set_phase("max").phase.description


def test_the_disturbances_of_a_measurement():
    from smallmind_torch import tuning

    quiet = {"a": [10.0, 11.0, 10.5], "b": [30.0, 90.0, 31.0]}
    assert tuning.disturbances(quiet, "a", 0.1) == []  # b's burst does not change the choice
    assert tuning.disturbances(quiet, "b", None) == ["b's rounds differ by 3.00x"]
    assert tuning.disturbances(quiet, "a", 0.9) == ["other processes kept 0.90 cores busy"]


def test_a_choice_made_while_another_process_hogs_the_cpu_is_never_cached(monkeypatch, tmp_path,
                                                                          capsys):
    import subprocess
    import sys

    from smallmind_torch import tuning
    from smallmind_torch.threads import threads

    if not ops.available():
        pytest.skip("custom ops unavailable here: only one candidate runs")
    monkeypatch.delenv("SMALLMIND_MAX")
    path = tmp_path / "max.json"
    monkeypatch.setattr(tuning, "cache_file", lambda: path)
    model = GPT(TINY).eval()
    hog = subprocess.Popen([sys.executable, "-c",
                            "import time\nend = time.time() + 60\nwhile time.time() < end: pass"])
    try:
        import time

        time.sleep(0.3)  # the hog spinning before the measurement starts
        with threads(1):  # one core for us, the other for the hog
            busy = model.set_phase("max").phase
    finally:
        hog.kill()
        hog.wait()
    err = capsys.readouterr().err
    assert "not cached" in busy.description and "other processes kept" in busy.description
    assert "measuring again" in err and "for this process only, not cached" in err
    with threads(1):  # (the cache is keyed by the thread count too)
        assert tuning.cached_entry(model, "max") is None  # a later process measures again
        quiet = model.set_phase("max").phase  # the machine quiet again: measured, cached
        entry = tuning.cached_entry(model, "max")
    assert "measured now" in quiet.description and entry["chosen"] in MAX_CANDIDATES
    assert entry["other_cores"] < 0.25 and set(entry["rounds_ms"]) == set(MAX_CANDIDATES)


def test_tune_shows_the_choice_and_measures_again_on_demand(monkeypatch, tmp_path, capsys):
    from smallmind_torch import tuning

    if not ops.available():
        pytest.skip("custom ops unavailable here: only one candidate runs")
    args = ["tune", "--tiny", "--threads", "1"]
    assert cli.main(args) == 0  # the tests' SMALLMIND_MAX=first: nothing measured
    assert "SMALLMIND_MAX=first" in capsys.readouterr().out
    measure_max_as_if_quiet(monkeypatch)
    monkeypatch.setattr(tuning, "cache_file", lambda: tmp_path / "max.json")
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "nothing cached: measuring now" in out and "max = " in out and "chosen" in out
    assert cli.main(args) == 0  # now from the cache, with each candidate's rounds
    out = capsys.readouterr().out
    assert "cached in" in out and "rounds (ms)" in out and "other processes kept" in out
    assert "measuring" not in out
    assert cli.main([*args, "--force"]) == 0
    assert "measuring again (--force)" in capsys.readouterr().out
    assert cli.main(["tune", "--preset", "nope"]) == 2


def test_a_choice_far_slower_than_its_memory_roofline_is_disturbed(monkeypatch):
    from smallmind_torch import tuning

    model = GPT(TINY).eval()
    assert tuning.roofline_ms(model) is None  # small weights: a step is overhead, not memory
    monkeypatch.setattr(tuning, "ROOFLINE_MIN_BYTES", 0)
    fp32, int8 = tuning.roofline_ms(model), tuning.roofline_ms(model, "int8")
    assert 0 < int8 < fp32  # a quarter of the matrices' bytes
    rounds = {"a": [10.0, 10.5, 10.2]}
    assert tuning.disturbances(rounds, "a", 0.0, roofline=5.0) == []
    assert tuning.disturbances(rounds, "a", 0.0, roofline=2.0) == [
        "a took 10.2 ms, 5.1x its memory roofline (2.0 ms)"]


def test_max_chooses_the_first_candidate_the_fastest_does_not_beat_beyond_the_noise():
    """Candidates the rounds cannot rank are a tie, won by the preset's preferred (earlier)
    form: a busy machine's noise cannot flip the choice between them."""
    from smallmind_torch.tuning import fastest_beyond_noise

    order = ["a", "b", "c"]
    assert fastest_beyond_noise({"a": [10, 11, 12], "b": [9, 9.2, 9.4], "c": None}, order) == "b"
    assert fastest_beyond_noise({"a": [10, 10.2, 10.4], "b": [9.9, 10, 10.1]}, order) == "a"
    # ranges that overlap: the medians differ by 30%, the rounds do not tell them apart
    assert fastest_beyond_noise({"a": [12, 13, 20], "b": [8, 10, 12.5]}, order) == "a"
    assert fastest_beyond_noise({"a": None, "b": None, "c": [1, 1, 1]}, order) == "c"
