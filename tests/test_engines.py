"""`smallmind peers`: every fp32 engine gives reference's greedy tokens on the same weights and
every int8 engine has its agreement with them measured, the driver runs each engine in its own
process and reports every status, an fp32 engine that disagrees is FAILED and not timed (an
int8 one is timed), bad arguments are one-line errors. Tiny shapes; no speed asserted."""
import json

import pytest
import torch

from smallmind_torch import GPT
from smallmind_torch.cli import main
from smallmind_torch.study.peers import bench as peer_bench
from smallmind_torch.study.peers import engines
from smallmind_torch.study.peers.base import save_weights
from smallmind_torch.study.peers.onnx_export import DecodeWithPast, empty_past
from smallmind_torch.study.protocol.timing import spread
from smallmind_torch.study.report.peer_tables import format_case, markdown
from smallmind_torch.study.results import CaseResult, EngineRow, PeersResult

from helpers import TINY

PROMPT, N = [5, 1, 17, 3], 6


ENGINES = ["smallmind", "smallmind:reference", "smallmind:max-int8", "onnxruntime",
           "onnxruntime-int8", "ctranslate2", "ctranslate2-int8", "hf", "hf-compiled",
           "llama.cpp-q4_0"]
LOSSY = {"smallmind:max-int8": "int8", "onnxruntime-int8": "int8", "ctranslate2-int8": "int8",
         "llama.cpp-q4_0": "int4"}  # the other llama.cpp and the torchao engines: in
# test_engines_llama_torchao.py, in this process


@pytest.fixture(scope="module")
def peers_run(tmp_path_factory):
    """One `smallmind peers --tiny` run of every engine, each in its own process, on two prompt
    lengths (weights whose greedy tokens are not all the same). hf-compiled uses a backend
    that skips inductor's C++ compile (seconds); the benchmark compiles with inductor and its
    tokens are checked the same way before anything is timed."""
    out = tmp_path_factory.mktemp("peers")
    argv = ["peers", "--tiny", "--quiet", "--seed", "5", "--long-prompt", "20", "--engines",
            *ENGINES, "--compile-backend", "aot_eager", "--json", str(out / "peers.json"),
            "--markdown", str(out / "peers.md")]
    import contextlib
    import io

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        rc = main(argv)
    assert rc == 0
    data = json.loads((out / "peers.json").read_text())
    return data, text.getvalue(), (out / "peers.md").read_text()


@pytest.mark.parametrize("name", ENGINES)
def test_each_engine_gives_reference_greedy_tokens(peers_run, name):
    """In its own process, on both prompts: checked against reference before it is timed (an
    int8 engine: its agreement measured)."""
    data, _, _ = peers_run
    engine = "smallmind:max" if name == "smallmind" else name
    missing = engines.missing_packages(name)
    for case in data["cases"]:
        row = next(r for r in case["rows"] if r["engine"] == engine)
        if missing:
            assert row["status"] == "not installed"
            pytest.skip(f"{name}: {engines.not_installed_reason(name, missing)}")
        assert row["status"] == "ok", row
        assert len(row["runs"]) == 1 and row["tokens_per_s"]["median"] > 0
        assert row["first_token_ms"]["median"] > 0 and row["decode_ms"]["median"] > 0
        assert row["weights"] == LOSSY.get(name, "fp32")
        if name in LOSSY:
            assert 0.0 <= row["agreement"] <= 1.0
            assert (row["first_mismatch"] is None) == (row["agreement"] == 1.0)
        else:
            assert row["agreement"] is None and row["first_mismatch"] is None


def test_peers_tiny_writes_tables_and_json_with_every_status(peers_run):
    data, text, md = peers_run
    assert [(c["prompt_len"], c["new_tokens"]) for c in data["cases"]] == [(4, 6), (20, 6)]
    for case in data["cases"]:
        rows = {r["engine"]: r for r in case["rows"]}
        assert list(rows) == ["smallmind:max", *ENGINES[1:]]
        assert all(r["status"] in ("ok", "not installed") for r in rows.values())
        for key, fmt in (("x_best_peer", "fp32"), ("x_best_int8_peer", "int8"),
                         ("x_best_int4_peer", "int4")):
            ok_peers = [n for n in engines.PEERS if n in rows and rows[n]["status"] == "ok"
                        and rows[n]["weights"] == fmt]
            if ok_peers:
                best = max(rows[n]["tokens_per_s"]["median"] for n in ok_peers)
                ratio = case["ratios"]["1"]["smallmind:max"][key]
                assert ratio == pytest.approx(rows["smallmind:max"]["tokens_per_s"]["median"] / best)
    assert data["settings"]["runs"] == 1 and data["env"]["cpu"]
    assert "x best fp32 peer" in text and "x best int8 peer" in text and "first token x ORT" in text
    assert "tiny, prompt 20" in text and "of tokens = fp32 reference" in text
    assert md.count("| ok |") == sum(r["status"] == "ok" and r["weights"] == "fp32"
                                     for c in data["cases"] for r in c["rows"])


def test_the_exported_decode_step_matches_the_model_with_past_kv():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    step = DecodeWithPast(model)
    idx = torch.randint(0, TINY.vocab_size, (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(idx).argmax(-1)  # (1, 9)
        past = empty_past(TINY)
        for lo, hi in [(0, 4), (4, 5), (5, 9)]:  # prefill, one token, several after a past
            token, *past = step(idx[:, lo:hi], past)
            assert int(token) == int(expected[0, hi - 1])
            assert past[0].shape == (1, TINY.n_head, hi, TINY.head_dim)


def test_engine_names():
    assert engines.split_name("smallmind") == ("smallmind", None)
    assert engines.split_name("smallmind:phase2") == ("smallmind", "phase2")
    for bad in ["nope", "smallmind:nope", "hf:max"]:
        with pytest.raises(ValueError):
            engines.split_name(bad)
    assert set(engines.PEERS) == {"onnxruntime", "onnxruntime-int8", "ctranslate2",
                                  "ctranslate2-int8", "hf", "hf-compiled", "llama.cpp",
                                  "llama.cpp-q8_0", "llama.cpp-q4_0", "torchao-int8",
                                  "torchao-int4"}
    assert engines.engine_weights("smallmind:max-int8") == "int8"
    assert engines.engine_weights("smallmind", "max-int8") == "int8"
    assert engines.engine_weights("smallmind") == engines.engine_weights("hf") == "fp32"


def _shift_reference(monkeypatch, index):
    """peer_bench compares every engine with reference's tokens with token `index` changed."""
    real = peer_bench.reference_tokens

    def shifted(model, prompt, n):
        tokens = real(model, prompt, n)
        tokens[index] = (tokens[index] + 1) % model.config.vocab_size
        return tokens

    monkeypatch.setattr(peer_bench, "reference_tokens", shifted)


def test_an_engine_that_disagrees_is_failed_and_not_timed(monkeypatch, tmp_path, capsys):
    _shift_reference(monkeypatch, 3)
    monkeypatch.setattr(peer_bench, "missing_packages",
                        lambda name: ["ctranslate2"] if name == "ctranslate2" else [])
    out = tmp_path / "peers.json"
    assert main(["peers", "--tiny", "--quiet", "--engines", "smallmind:reference", "ctranslate2",
                 "--json", str(out)]) == 0
    rows = {r["engine"]: r for r in json.loads(out.read_text())["cases"][0]["rows"]}
    failed = rows["smallmind:reference"]
    assert failed["status"] == "FAILED" and failed["first_mismatch"] == 3
    assert failed["runs"] == [] and failed["tokens_per_s"] is None
    assert rows["ctranslate2"]["status"] == "not installed"
    text = capsys.readouterr().out
    assert "FAILED: greedy tokens differ from reference's (first at token 3)" in text
    assert "not installed: ctranslate2 missing" in text


def test_an_int8_engine_that_disagrees_is_timed_with_its_agreement(monkeypatch, tmp_path):
    _shift_reference(monkeypatch, 2)
    out = tmp_path / "peers.json"
    assert main(["peers", "--tiny", "--quiet", "--engines", "smallmind:max-int8", "--json",
                 str(out)]) == 0
    row = json.loads(out.read_text())["cases"][0]["rows"][0]
    assert row["status"] == "ok" and len(row["runs"]) == 1 and row["first_mismatch"] <= 2
    assert row["agreement"] <= 5 / 6


def test_a_worker_that_cannot_prepare_is_an_error_with_the_reason(tmp_path):
    for in_process in (False, True):  # in its own process, and in this one (smallmind bench)
        rows = {"smallmind:reference": EngineRow("smallmind:reference", 1, is_peer=False)}
        ready = peer_bench.start_workers(list(rows), tmp_path / "no-such-weights.pt", tmp_path, 1,
                                         peer_bench.PeerSettings(), rows, lambda msg: None,
                                         in_process)
        row = rows["smallmind:reference"]
        assert ready == {} and row.status == "error" and "FileNotFoundError" in row.reason


def test_ratios_and_tables_from_rows():
    def row(engine, tps, first, status="ok"):
        r = EngineRow(engine, 2, engines.is_peer(engine), status=status, label=engine)
        if status == "ok":
            r.tokens_per_s, r.first_token_ms, r.decode_ms = spread([tps]), spread([first]), spread([1])
        return r

    case = CaseResult("seed", 16, 50, [row("smallmind:max", 300, 2), row("onnxruntime", 200, 4),
                                       row("ctranslate2", 250, 8), row("hf", 0, 0, "error")])
    ratios = case.ratios()[2]
    assert ratios["smallmind:max"] == {"x_best_peer": 1.2, "first_token_x_onnxruntime": 0.5}
    assert ratios["ctranslate2"]["x_best_peer"] == 1.0 and "hf" not in ratios
    table = format_case(case)
    assert "1.20x" in table and "0.50x" in table and "error" in table
    assert "| smallmind:max | fp32 | 2 | 300 |" in markdown(PeersResult({"runs": 3}, {}, {}, [case]))


@pytest.mark.parametrize("args, message", [
    (["--engines", "nope"], "unknown engine 'nope'"),
    (["--engines", "smallmind:nope"], "unknown phase 'nope'"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--runs", "0"], "--runs must be >= 1"),
    (["--shapes", "huge"], "unknown shape 'huge'"),
    (["--phase", "phase9"], "unknown phase 'phase9'"),
    (["--prompt-len", "30"], "exceed the context"),
    (["--n-layer", "2"], "add it to --shapes"),
])
def test_bad_arguments_are_one_line_errors(args, message, capsys):
    assert main(["peers", "--tiny", "--quiet", *args] if "--shapes" not in args
                else ["peers", "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_a_bad_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert main(["peers", "--quiet", "--shapes", "seed", "--checkpoint", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("smallmind: error:") and "\n" not in err


def test_the_worker_answers_json_lines(tmp_path):
    import subprocess
    import sys

    torch.manual_seed(0)
    model = GPT(TINY).eval()
    weights, workdir = save_weights(model, tmp_path / "weights.pt"), tmp_path
    ref = peer_bench.reference_tokens(model, PROMPT, N)
    cmds = (json.dumps({"prompt": PROMPT, "new_tokens": N}) + "\nnot json\n"
            + json.dumps({"op": "profile", "prompt": PROMPT, "new_tokens": N}) + "\n")
    out = subprocess.run([sys.executable, "-m", "smallmind_torch.study.peers.worker", "--engine",
                          "smallmind:reference", "--weights", str(weights), "--workdir", str(workdir)],
                         input=cmds, capture_output=True, text=True, timeout=120)
    started, ready, run, bad, profiled = [json.loads(line) for line in out.stdout.splitlines()]
    assert started["started"] and ready["ok"] and ready["ready"] and run["tokens"] == ref
    assert not bad["ok"] and "bad command" in bad["error"]
    assert profiled["ok"] and profiled["bytes_per_token"] > 0 and profiled["allocs_per_token"] > 0


def test_the_experiment_script_runs_the_command(capsys):
    from helpers import load_experiment

    module = load_experiment("peers")
    assert module.main(["--tiny", "--engines", "nope"]) == 2
    assert "unknown engine 'nope'" in capsys.readouterr().err
