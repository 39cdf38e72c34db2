"""`smallmind diff A B`: two phases profiled the same way and diffed op by op. On tiny shapes,
the switches' known effects show in the diff: phase1 -> phase2 turns the ATen matmuls into
custom ops and adds the KV cache (the attention's matmuls do a fraction of the work), phase0 ->
phase1 adds the workspace (allocations per token drop); the diff round-trips through JSON, the
command prints the table and the files it wrote, and bad input is one line."""
import json
import re

import pytest
import torch

from smallmind_torch import GPT, cli
from smallmind_torch.ops import CustomOpsUnavailable
from smallmind_torch.study.measure.diff import diff_profiles, profile_ops
from smallmind_torch.study.report.diff_tables import diff_markdown, diff_text, num
from smallmind_torch.study.results import OpProfile, PhaseDiff

from helpers import TINY

PROMPT, TOKENS = 4, 3


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1234)
    return GPT(TINY).eval()


@pytest.fixture(scope="module")
def profile(model):
    """name -> OpProfile of a few decode steps, each profiled once (phase0: one step)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    done = {}

    def get(name):
        if name not in done:
            try:
                done[name] = profile_ops(model, name, prompt_len=PROMPT, stacks=False,
                                         tokens=1 if name == "phase0" else TOKENS)
            except CustomOpsUnavailable as exc:
                pytest.skip(f"custom ops unavailable: {exc}")
        return done[name]

    yield get
    torch.set_num_threads(old)


def _row(diff, name):
    return next(r for r in diff.rows if r.name == name)


def test_custom_ops_replace_the_aten_matmuls(profile):
    diff = diff_profiles(profile("phase1"), profile("phase2"))
    assert "smallmind::linear_out" in diff.only_in_b and "smallmind::causal_softmax_" in diff.only_in_b
    assert {"aten::addmm", "aten::mm"} <= set(diff.only_in_a)
    assert _row(diff, "smallmind::linear_out").kind == "op" and _row(diff, "linear").kind == "label"
    assert _row(diff, "smallmind::linear_out").calls_b == TINY.n_layer * 4 + 1  # + the lm head
    assert diff.same_tokens  # the same greedy tokens: the same work, in other forms


def test_kv_cache_removes_the_prefix_recomputation(profile):
    diff = diff_profiles(profile("phase1"), profile("phase2"))
    assert "kv_cache" in diff.only_in_b
    # without the cache every step multiplies the whole prefix (prompt + tokens so far), with
    # it one query row: the attention's batched matmuls do a fraction of the FLOPs
    for op in ("aten::bmm", "aten::baddbmm"):
        row = _row(diff, op)
        assert row.calls_a == row.calls_b and 0 < row.flops_b * (PROMPT + 1) <= row.flops_a * 1.01


def test_workspace_removes_the_allocations(profile):
    diff = diff_profiles(profile("phase0"), profile("phase1"))
    assert diff.tokens_a == 1 and diff.tokens_b == TOKENS  # per token on each side
    assert diff.allocs_per_token_a > 20 * diff.allocs_per_token_b > 0
    assert diff.bytes_per_token_a > 2 * diff.bytes_per_token_b
    assert "aten::select" in {r.name for r in diff.rows[:5]}  # phase0's per-element loops


def test_rows_partition_the_profiled_time_and_allocations(profile):
    p = profile("phase1")
    assert p.total_ms > 0 and len(p.generated) == TOKENS
    assert all(s.calls > 0 and s.self_ms >= -1e-6 for s in p.ops.values())
    # self times never count a nested key twice: they add up to at most the steps' time
    assert sum(s.self_ms for s in p.ops.values()) <= p.total_ms
    assert sum(s.allocs for s in p.ops.values()) <= p.alloc_count
    diff = diff_profiles(p, profile("phase2"))
    deltas = [abs(r.self_ms_delta) for r in diff.rows]
    assert deltas == sorted(deltas, reverse=True)
    assert set(diff.only_in_a) == {r.name for r in diff.rows if r.only_in == "A"}


def test_the_diff_round_trips_through_json(profile):
    diff = diff_profiles(profile("phase1"), profile("phase2"))
    data = json.loads(json.dumps(diff.to_dict()))
    assert data["rows"][0]["self_ms_delta"] == diff.rows[0].self_ms_delta  # DERIVED, for readers
    assert PhaseDiff.from_dict(data) == diff
    p = profile("phase1")
    assert OpProfile.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_the_tables_print_figures_not_exponents(profile):
    diff = diff_profiles(profile("phase1"), profile("phase2"))
    text, md = diff_text(diff, 15), diff_markdown(diff, 5)
    for out in (text, md):
        assert not re.search(r"\de[-+]\d", out)
        assert "only in phase1: " in out and "smallmind::linear_out" in out
    assert md.count("\n| `") == 5 and md.startswith("### phase1 -> phase2")
    assert [num(1.89e-05), num(0.0699), num(1234.4), num(-0.5, True), num(0)] == \
        ["~0", "0.0699", "1,234", "-0.500", "0"]


def test_cli_prints_the_table_and_writes_the_files(tmp_path, capsys):
    out = tmp_path / "diff"
    assert cli.main(["diff", "phase1", "phase2", "--tiny", "--threads", "1", "--tokens", "2",
                     "--prompt-len", "4", "--rows", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    json_path, flame = out / "phase1-vs-phase2.diff.json", out / "phase1-vs-phase2.diff-flame.html"
    assert "label / op" in printed and "only in phase2: " in printed
    assert printed.rstrip().endswith(f"files written:\n  {json_path}\n  {flame}")
    diff = PhaseDiff.from_dict(json.loads(json_path.read_text()))
    assert diff.ok and diff.flame_graph == str(flame) and "smallmind::linear_out" in diff.only_in_b
    page = flame.read_text(encoding="utf-8")
    assert "<html" in page.lower() and "smallmind::linear_out" in page and "aten::addmm" in page
    assert "generate_stream" not in page  # by label and op: the two phases' Python differs


@pytest.mark.parametrize("args, message", [
    (["phase1", "phase1"], "A and B are the same preset"),
    (["phase1", "phase9"], "unknown phase 'phase9'"),
    (["phase1", "phase2", "--tokens", "0"], "--tokens must be >= 1"),
    (["phase1", "phase2", "--rows", "0"], "--rows must be >= 1"),
    (["phase1", "phase2", "--prompt-len", "30"], "must fit the model's block_size (32)"),
    (["phase1", "phase2", "--out", "FILE/sub"], "--out"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    (tmp_path / "FILE").write_text("a file, not a directory")
    args = [a.replace("FILE", str(tmp_path / "FILE")) for a in args]
    assert cli.main(["diff", *args, "--tiny", "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("smallmind: error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in "\n".join(err)
