"""`smallmind study` on a tiny configuration (through experiments/run_all.py, the script over it)
writes REPORT.md, results.json and the plots; results.json holds data, no Markdown, and the
report renders again from it alone, byte for byte; `--only` runs one part again and merges it;
usage errors are one line; the tables render FAILED / unavailable rows."""
import json
import re
import shutil
from pathlib import Path

import pytest

from smallmind_torch import cli
from smallmind_torch.study import BenchSettings, load_study, render_report, write_report
from smallmind_torch.study.measure.diff import DIFF_CHAIN
from smallmind_torch.study.report import plots, tables
from smallmind_torch.study.results import Check, EngineRow, PhaseResult, StudyResult

from helpers import load_experiment

PHASES = ["reference", "phase0", "phase1", "max"]
HEADINGS = ("## The story", "## Main table", "## Where a token's time goes",
            "## What each switch bought", "## What each switch changed, read off the profiler",
            "## The machine's limits and the roofline",
            "## Training: one optimizer step", "## Initialization", "## Batches and context",
            "## Weight formats", "## Speculative decoding", "## Peer engines on the same weights", "## Profiler traces",
            "## How long each part took", "## Environment")


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    rc = load_experiment("run_all").main(["--tiny", "--out", str(out / "results"), "--logdir",
                                          str(out / "runs"), "--no-progress", "--threads", "1",
                                          "--phases", *PHASES])
    assert rc == 0
    return out / "results", out / "runs"


def test_study_tiny(tiny_study):
    out, logdir = tiny_study
    text = (out / "REPORT.md").read_text()
    for heading in HEADINGS:
        assert heading in text, heading
    assert "TINY MODE" in text
    assert "seed baseline" in text and "HF transformers generate" in text
    data = json.loads((out / "results.json").read_text())
    assert list(data["phases"]) == PHASES
    assert all(p["status"] == "ok" for p in data["phases"].values())
    assert data["peers"]["hf"]["status"] in ("ok", "not installed")
    assert data["machine"]["bandwidth_large_gbs"] > 0
    assert data["ratios"]["max"]["speedup_vs_phase0"] > 0
    assert [r["label"] for r in data["waterfall"]][-1] == "= max" and data["training"]["model"]
    assert data["scaling"] and data["quantized"]["speed"] and data["engines"]["cases"]
    assert all(r["greedy_equal"] for r in data["speculative"]["shapes"][0]["rows"])
    assert [(d["a"], d["b"]) for d in data["diffs"]] == list(DIFF_CHAIN)
    assert all((out / d["flame_graph"]).exists() for d in data["diffs"] if d["status"] == "ok")
    for kind in ("tokens_per_s", "decode_split", "waterfall", "roofline", "positions", "batches",
                 "memory", "engines"):
        assert (out / plots.FILES[kind]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in PHASES:
        assert list((logdir / name).glob("*.pt.trace.json"))
        trace = data["traces"][name]
        assert trace["status"] == "ok" and trace["top_ops"]
        assert all((out / picture).exists() for picture in trace["pictures"])  # beside the report


def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_results_json_holds_data_not_markdown(tiny_study):
    out, _ = tiny_study
    data = json.loads((out / "results.json").read_text())
    rendered = [s for s in _strings(data) if "markdown" in s.lower() or "|---" in s or "\n" in s]
    assert not rendered, rendered[:3]
    assert "sections" not in data and all("table" not in t for t in data["traces"].values())


def test_the_report_renders_again_from_results_json_alone(tiny_study, tmp_path):
    out, _ = tiny_study
    again = tmp_path / "again"
    again.mkdir()
    shutil.copyfile(out / "results.json", again / "results.json")
    study = load_study(again / "results.json")
    paths = render_report(study, again)
    assert (again / "REPORT.md").read_bytes() == (out / "REPORT.md").read_bytes()
    assert {Path(p).name for p in paths.values()} <= {p.name for p in out.iterdir()}
    # and the results themselves: read back and written again, the same JSON
    text = (out / "results.json").read_text()
    assert json.dumps(study.to_dict(), indent=2, default=str) + "\n" == text


def test_only_runs_one_part_again_and_merges_it(tiny_study, tmp_path, capsys):
    out = tmp_path / "results"
    shutil.copytree(tiny_study[0], out)
    before = json.loads((out / "results.json").read_text())
    assert cli.main(["study", "--tiny", "--only", "init", "--out", str(out), "--no-progress",
                     "--threads", "1"]) == 0
    after = json.loads((out / "results.json").read_text())
    untouched = [k for k in before if k not in ("init", "durations")]
    assert {k: after[k] for k in untouched} == {k: before[k] for k in untouched}
    assert after["init"]["model"] and after["durations"]["init"] != before["durations"]["init"]
    assert (out / "REPORT.md").read_text() == _rendered(load_study(out / "results.json"), tmp_path)
    assert "report:" in capsys.readouterr().out


def _rendered(study, tmp_path) -> str:
    render_report(study, tmp_path / "rendered")
    return (tmp_path / "rendered" / "REPORT.md").read_text()


@pytest.mark.parametrize("args, code, message", [
    (["--only", "nope"], 2, "--only: unknown 'nope'"),
    (["--parts", "waterfall", "nope"], 2, "--parts: unknown 'nope'"),
    (["--engine-shapes", "huge"], 2, "--engine-shapes: unknown 'huge'"),
    (["--only", "init"], 2, "which does not exist"),
    (["--only", "init", "--corrupt"], 1, "cannot read"),
    (["--phases", "phase9"], 2, "unknown phase 'phase9'"),
])
def test_usage_errors_are_one_line(tmp_path, capsys, args, code, message):
    if "--corrupt" in args:
        args = [a for a in args if a != "--corrupt"]
        (tmp_path / "results.json").write_text('{"phases": {}}')
    assert cli.main(["study", "--tiny", "--out", str(tmp_path), "--no-progress", *args]) == code
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_help(capsys):
    assert cli.main(["study", "--help"]) == 0
    assert "--only PART" in capsys.readouterr().out


def test_tables_render_failed_and_unavailable_rows(tmp_path):
    ok = PhaseResult("reference", "ok", check=Check(0.0, True, 1e-4), tokens_per_s=100.0,
                     decode_ms=1.0, prefill_ms=2.0, bytes_per_token=1000.0, allocs_per_token=3.0,
                     gflops={512: 20.0}, time_split={"linear": 60.0, "other": 40.0})
    failed = PhaseResult("phase1", "FAILED", "greedy tokens differ", check=Check(1.0, False, 1e-4, 3))
    unavailable = PhaseResult("phase2", "unavailable", "no C++ compiler")
    peer = EngineRow("hf", 1, True, status="not installed", reason="transformers is not installed")
    study = StudyResult({"n_layer": 1, "n_head": 1, "n_embd": 8, "vocab_size": 8, "block_size": 8},
                        100, BenchSettings().to_dict(), {"torch": "x"}, None,
                        {"reference": ok, "phase1": failed, "phase2": unavailable}, {"hf": peer})
    table = tables.format_table(study)
    assert "FAILED" in table and "unavailable: no C++ compiler" in table and "not installed" in table
    paths = write_report(study, tmp_path)
    text = Path(paths["report"]).read_text()
    assert "FAILED" in text and "6.2" in text
    assert json.loads(Path(paths["json"]).read_text())["phases"]["phase2"]["status"] == "unavailable"
    again = json.loads(json.dumps(load_study(paths["json"]).to_dict()))
    assert again == json.loads(Path(paths["json"]).read_text())


def test_every_committed_file_of_the_results_is_linked_from_the_report_and_written_by_the_code():
    """No orphan: each file under results/ but the report and its data is linked from REPORT.md
    and is one the code writes (a plot of plots.FILES, a trace's views, a diff's flame graph)."""
    results = Path(__file__).resolve().parents[1] / "results"
    report = (results / "REPORT.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(([^)\s]+)\)", report))
    written = set(plots.FILES.values())
    files = sorted(p.relative_to(results).as_posix() for p in results.rglob("*") if p.is_file()
                   and p.name not in ("REPORT.md", "results.json"))
    assert any(f.endswith(".png") for f in files) and any(f.endswith(".html") for f in files)
    assert [f for f in files if f not in linked] == []
    assert [f for f in files if f not in written and not re.fullmatch(
        r"traces/([\w-]+)/\1\.(step\.png|memory\.png|flame\.html)|"
        r"traces/diffs/[\w-]+-vs-[\w-]+\.diff-flame\.html", f)] == []
