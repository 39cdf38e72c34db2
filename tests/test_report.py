"""run_all on a tiny configuration writes REPORT.md, results.json and the plots; the tables
render FAILED / unavailable rows."""
import json
from pathlib import Path

from smallmind_torch.study import plots, report, tables
from smallmind_torch.study.harness import BenchSettings
from smallmind_torch.study.results import Check, PeerResult, PhaseResult, StudyResult

from helpers import load_experiment



def test_run_all_tiny(tmp_path):
    out, logdir = tmp_path / "results", tmp_path / "runs"
    rc = load_experiment("run_all").main(["--tiny", "--out", str(out), "--logdir", str(logdir),
                                          "--no-progress", "--threads", "1", "--phases",
                                          "reference", "phase0", "phase1", "max"])
    assert rc == 0
    text = (out / "REPORT.md").read_text()
    for heading in ("## The story", "## Main table", "## Where a token's time goes",
                    "## What each switch bought", "## The machine's limits and the roofline",
                    "## Training: one optimizer step", "## Initialization", "## Batches and context",
                    "## Peer engines on the same weights", "## Profiler traces",
                    "## How long each part took", "## Environment"):
        assert heading in text, heading
    assert "TINY MODE" in text
    assert "seed baseline" in text and "HF transformers generate" in text
    data = json.loads((out / "results.json").read_text())
    assert set(data["phases"]) == {"reference", "phase0", "phase1", "max"}
    assert all(p["status"] == "ok" for p in data["phases"].values())
    assert data["peers"]["hf"]["status"] in ("ok", "not installed")
    assert data["machine"]["bandwidth_large_gbs"] > 0
    assert data["ratios"]["max"]["speedup_vs_phase0"] > 0
    for kind in ("tokens_per_s", "decode_split", "waterfall", "roofline", "positions", "batches",
                 "memory", "engines"):
        assert (out / plots.FILES[kind]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("reference", "phase0", "phase1", "max"):
        assert list((logdir / name).glob("*.pt.trace.json"))


def test_tables_render_failed_and_unavailable_rows(tmp_path):
    ok = PhaseResult("reference", "ok", check=Check(0.0, True, 1e-4), tokens_per_s=100.0,
                             decode_ms=1.0, prefill_ms=2.0, bytes_per_token=1000.0, allocs_per_token=3.0,
                             gflops={512: 20.0}, time_split={"linear": 60.0, "other": 40.0})
    failed = PhaseResult("phase1", "FAILED", "greedy tokens differ",
                                 check=Check(1.0, False, 1e-4, 3))
    unavailable = PhaseResult("phase2", "unavailable", "no C++ compiler")
    peer = PeerResult("hf", "not installed", "transformers is not installed")
    study = StudyResult({"n_layer": 1, "n_head": 1, "n_embd": 8, "vocab_size": 8, "block_size": 8},
                                100, BenchSettings().to_dict(), {"torch": "x"}, None,
                                {"reference": ok, "phase1": failed, "phase2": unavailable}, {"hf": peer})
    table = tables.format_table(study)
    assert "FAILED" in table and "unavailable: no C++ compiler" in table and "not installed" in table
    paths = report.write_report(study, tmp_path)
    text = Path(paths["report"]).read_text()
    assert "FAILED" in text and "6.2" in text
    assert json.loads(Path(paths["json"]).read_text())["phases"]["phase2"]["status"] == "unavailable"
