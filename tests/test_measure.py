"""The measurement library on a tiny shape: every figure present and sane, the correctness
check in every result, FAILED / unavailable / not-installed rows, the peers in their own
process and in this one. Correctness only, never speed."""
import json
import math

import pytest
import torch

from smallmind_torch import GPT, PHASES, OptConfig, attention
from smallmind_torch.labels import CATEGORIES
from smallmind_torch.study import BenchSettings, run
from smallmind_torch.study.measure.peer import measure_peer
from smallmind_torch.study.measure.preset import measure_preset, reference_run
from smallmind_torch.study.protocol import profiling

from helpers import TINY


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the tests share 2 cores; this only makes them less noisy
    yield
    torch.set_num_threads(old)


@pytest.fixture
def model():
    torch.manual_seed(1234)
    return GPT(TINY).eval()


SETTINGS = BenchSettings.tiny()


def _positive(x):
    return x is not None and math.isfinite(x) and x > 0


def test_study_on_tiny_shape(model):
    study = run.run_study(model, ["reference", "phase1", "max"], ["hf"], SETTINGS)
    assert list(study.phases) == ["reference", "phase1", "max"]
    for name, r in study.phases.items():
        assert r.status == "ok", (name, r.reason)
        assert r.check is not None and r.check.passed and r.check.tokens_equal
        assert r.check.max_abs_diff <= 1e-4
        for figure in (r.tokens_per_s, r.decode_ms, r.prefill_ms, r.bytes_per_token, r.allocs_per_token):
            assert _positive(figure), (name, figure)
        assert set(r.gflops) == set(SETTINGS.gemm_sizes) and all(_positive(g) for g in r.gflops.values())
        assert set(r.time_split) == set(CATEGORIES)
        assert sum(r.time_split.values()) == pytest.approx(100.0, abs=0.5)
        assert all(v >= 0 for v in r.time_split.values())
        assert _positive(r.roofline["decode_fraction_of_roofline"])
        assert r.env["torch"] == torch.__version__ and "cpu" in r.env and r.env["device"] == "cpu"
    # each preset's own labels show up in its split
    assert study.phases["phase1"].time_split["attention_scores"] > 0
    # max: the prompt and every token through the fused step (fused prefill and decode)
    # (the cache writes and the attention inside it: no module-level label of theirs)
    assert study.phases["max"].time_split["decode_step"] > 0
    assert study.phases["max"].time_split["attention_scores"] == 0
    m = study.machine
    assert _positive(m.bandwidth_weights_gbs) and _positive(m.bandwidth_large_gbs) and _positive(m.mm_peak_gflops)
    assert m.weight_bytes > 0 and _positive(m.ideal_decode_ms)
    hf = study.peers["hf"]  # in its own process, through the HF engine adapter
    assert hf.status == "ok" and hf.first_mismatch is None and hf.is_peer, hf.reason
    assert len(hf.runs) == SETTINGS.runs and hf.threads == torch.get_num_threads()
    assert _positive(hf.tokens_per_s["median"]) and _positive(hf.decode_ms["median"])
    assert _positive(hf.bytes_per_token) and _positive(hf.allocs_per_token)  # profiled there
    ratios = study.ratios()
    assert _positive(ratios["max"]["speedup_vs_hf"]) and _positive(ratios["max"]["memory_vs_hf"])
    d = json.loads(json.dumps(study.to_dict()))
    assert d["phases"]["phase1"]["check"]["passed"] is True
    assert model.phase.opt == PHASES["reference"]  # the phase is restored


def test_phase0_allocates_more_than_phase1(model):
    study = run.run_study(model, ["phase0", "phase1"], [], SETTINGS, machine=False)
    p0, p1 = study.phases["phase0"], study.phases["phase1"]
    assert p0.ok and p1.ok
    assert p0.allocs_per_token > p1.allocs_per_token  # the workspace (3a) removes allocations
    assert study.ratios()["phase1"]["speedup_vs_phase0"] > 0


def test_wrong_form_is_reported_failed_not_benchmarked(model, monkeypatch):
    wrong = OptConfig(softmax="naive")  # workspace off: the allocating SOFTMAX dispatch
    monkeypatch.setitem(attention.SOFTMAX, "naive",
                        (lambda scores, q_offset: torch.softmax(scores * 1.5, dim=-1),
                         attention.softmax_into_naive))
    study = run.run_study(model, {"reference": "reference", "broken": wrong}, [], SETTINGS, machine=False)
    assert study.phases["reference"].ok
    r = study.phases["broken"]
    assert r.status == "FAILED"
    assert not r.check.passed and r.check.max_abs_diff > 1e-4
    assert r.tokens_per_s is None and r.bytes_per_token is None  # not silently benchmarked
    assert "logit diff" in r.describe_status()
    assert "broken" not in study.ratios()


def test_different_weights_fail_the_check(model):
    reference = reference_run(model, SETTINGS)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.mul_(3.0)
    r = measure_preset(model, "reference", SETTINGS, reference=reference)
    assert r.status == "FAILED" and not r.check.passed


def test_unavailable_custom_ops_are_reported_and_the_study_goes_on(model, monkeypatch):
    from smallmind_torch import ops

    def boom():
        raise ops.CustomOpsUnavailable("no compiler (simulated)")

    monkeypatch.setattr(ops, "load_all", boom)
    study = run.run_study(model, ["phase2", "reference"], [], SETTINGS, machine=False)
    assert study.phases["phase2"].status == "unavailable"
    assert "simulated" in study.phases["phase2"].describe_status()
    assert study.phases["reference"].ok


def test_hf_not_installed(model, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)
    r = measure_peer(model, "hf", SETTINGS, reference_run(model, SETTINGS), in_process=True)
    assert r.status == "not installed" and r.tokens_per_s is None


def test_a_peer_that_disagrees_is_failed_and_not_profiled(model):
    reference = reference_run(model, SETTINGS)
    reference.tokens[2] = (reference.tokens[2] + 1) % TINY.vocab_size
    r = measure_peer(model, "hf", SETTINGS, reference, in_process=True)
    assert r.status == "FAILED" and r.first_mismatch == 2
    assert r.runs == [] and r.tokens_per_s is None and r.bytes_per_token is None


def test_the_phase_is_restored_after_each_measurement(model):
    model.set_phase("phase1")
    r = measure_preset(model, "max", SETTINGS)
    assert r.ok and r.phase.startswith("max")
    assert model.phase.name == "phase1" and model.phase.opt == PHASES["phase1"]


def test_new_presets_are_picked_up(monkeypatch):
    monkeypatch.setitem(PHASES, "extra", PHASES["reference"].replace(workspace=True))
    assert ("extra", "extra") in run._phase_items(None)


class _Ev:
    def __init__(self, name, start, end, nbytes=0, tid=1):
        self._n, self._s, self._e, self._b, self._t = name, start, end, nbytes, tid

    def name(self):
        return self._n

    def start_ns(self):
        return self._s

    def end_ns(self):
        return self._e

    def nbytes(self):
        return self._b

    def start_thread_id(self):
        return self._t


def test_split_excludes_nested_labels_and_counts_allocations():
    events = [_Ev(profiling.STEP_LABEL, 0, 1000), _Ev("linear", 100, 300), _Ev("attention_scores", 300, 700),
              _Ev("softmax", 400, 500),  # nested in attention_scores
              _Ev("aten::mm", 120, 280), _Ev("linear", 5000, 6000, tid=2),  # another thread: ignored
              _Ev("[memory]", 150, 150, 64), _Ev("[memory]", 160, 160, -64), _Ev("[memory]", 170, 170, 32)]
    total_ms, split = profiling.split_from_events(events)
    assert total_ms == pytest.approx(1e-3)
    assert split["linear"] == pytest.approx(200e-6)
    assert split["attention_scores"] == pytest.approx(300e-6)
    assert split["softmax"] == pytest.approx(100e-6)
    assert split["other"] == pytest.approx(400e-6)
    assert profiling.allocations_from_events(events) == (96, 2)


def test_settings_validate():
    with pytest.raises(ValueError):
        BenchSettings(new_tokens=0)
    assert BenchSettings().new_tokens == 50 and BenchSettings().runs == 3
    assert BenchSettings().smoke is False and BenchSettings.tiny().smoke is True


def test_bench_cli_writes_json(tmp_path):
    from smallmind_torch import cli

    path = tmp_path / "bench.json"
    rc = cli.main(["bench", "--tiny", "--phases", "reference", "max", "--peers", "hf",
                   "--no-progress", "--no-machine", "--threads", "1", "--json", str(path)])
    assert rc == 0
    data = json.loads(path.read_text())
    assert set(data["phases"]) == {"reference", "max"}
    assert data["phases"]["max"]["status"] == "ok"
    hf = data["peers"]["hf"]  # in this process: its allocations profiled beside the presets'
    assert hf["status"] == "ok" and hf["bytes_per_token"] > 0 and hf["allocs_per_token"] > 0
    assert cli.main(["bench", "--tiny", "--phases", "nope"]) == 2
    assert cli.main(["bench", "--tiny", "--peers", "nope"]) == 2


def test_experiment_script_main(capsys):
    from helpers import load_experiment

    mod = load_experiment("phase1_batched_attention")
    assert mod.main(["--tiny", "--no-progress", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "phase1" in out and "tokens/s" in out


def test_quiet_profiler_drops_only_the_noise(capfd):
    import os

    with profiling.quiet_profiler():
        os.write(2, b"USDT:2026-11-25 1:1 SyncActivityProfilerHandler.cpp:52] profiler_start\n")
        os.write(2, b"[W CPUAllocator.cpp:245] Memory block of unknown size was allocated before "
                    b"the profiling started, profiler results will not include the deallocation event\n")
        os.write(2, b"a real error\n")
    err = capfd.readouterr().err
    assert err == "a real error\n"


def test_every_figure_has_its_spread_and_tiny_mode_says_so(model, capsys):
    from smallmind_torch.study import print_study

    study = run.run_study(model, ["reference"], [], SETTINGS)
    r = study.phases["reference"]
    for figure in ("tokens_per_s", "decode_ms", "prefill_ms"):
        s = r.spread[figure]
        assert s["min"] <= s["median"] <= s["max"] and s["runs"] >= 1
    assert set(study.machine.spread) >= {"bandwidth_weights_gbs", "bandwidth_large_gbs"}
    assert all(v["runs"] == SETTINGS.machine_samples for v in study.machine.spread.values())
    print_study(study)
    out = capsys.readouterr().out
    assert "TINY MODE" in out and "±" in out
