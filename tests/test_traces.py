"""Profiler traces: written per preset, valid JSON, parsed by torch-tb-profiler's own loader;
their offline views: the flame graph (self-contained HTML, ATen frames, clean names, the
differential mode), the memory and step pictures and the data behind them; the file list."""
import json
import re

import pytest
import torch

from smallmind_torch import GPT
from smallmind_torch.labels import CATEGORIES
from smallmind_torch.study.measure import traces
from smallmind_torch.study.protocol import trace_events
from smallmind_torch.study.protocol.profiling import STEP_LABEL
from smallmind_torch.study.report import flame, pictures
from smallmind_torch.study.report.tables import text_table, top_ops_rows

from helpers import TINY


def _trace(tmp_path_factory, phase):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    model = GPT(TINY).eval()
    logdir = tmp_path_factory.mktemp("runs")
    result = traces.write_traces(model, phase, logdir, prompt_len=4, row_limit=5)
    torch.set_num_threads(old)
    return logdir, result


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return _trace(tmp_path_factory, "phase1")


@pytest.fixture(scope="module")
def written_phase0(tmp_path_factory):
    return _trace(tmp_path_factory, "phase0")


def page_data(path) -> dict:
    """The data a flame-graph page draws (its PAGE object)."""
    text = open(path, encoding="utf-8").read()
    return json.loads(re.search(r"const PAGE = (.*);\n", text).group(1))


def frames(node):
    yield node
    for child in node["children"]:
        yield from frames(child)


def test_trace_files_exist_and_are_json(written):
    logdir, r = written
    assert r.status == "ok", r.reason
    assert r.run_dir == str(logdir / "phase1")
    assert len(r.trace_files) == 1 and r.trace_files[0].endswith(".pt.trace.json")
    for path in (r.trace_files[0], r.chrome_trace):
        data = traces.validate_trace_json(path)
        names = {e.get("name") for e in data["traceEvents"]}
        assert "linear" in names and "attention_scores" in names  # the labels are in the trace
        assert any(e.get("name") == "[memory]" for e in data["traceEvents"])  # profile_memory
    assert r.top_ops and "Self CPU" in text_table(*top_ops_rows(r))  # rendered from the data
    assert sum(r.time_split.values()) == pytest.approx(100.0, abs=0.5)


def test_offline_pictures(written):
    _, r = written
    step, page, memory = r.pictures
    for png in (step, memory):
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert step.endswith(".step.png") and page.endswith(".flame.html") and memory.endswith(".memory.png")
    assert not [p for p in r.files if "GPU" in r.files[p] or p.endswith(".memory.html")]  # CPU run


def test_flame_graph_is_self_contained_with_aten_frames(written):
    _, r = written
    page = r.pictures[1]
    text = open(page, encoding="utf-8").read()
    # nothing fetched: no tag loads a file, and the viewer's code is inside
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=", text, re.I)
    for script in flame.SCRIPTS:
        code = (flame.ASSETS / f"{script}.min.js").read_text(encoding="utf-8")
        assert code in text, script
    data = page_data(page)
    names = {f["name"] for chart in data["charts"] for f in frames(chart["root"])}
    assert "generation.py:generate_stream" in names and "workspace.py:workspace_forward" in names
    assert {"aten::addmm", "aten::bmm"} & names and "linear" in names  # ops and labels as frames
    assert not [n for n in names if "0x" in n or "(" in n], names  # no addresses, no line numbers
    assert data["unit"] == "ms per token"  # two profiled decode steps, shown per token
    stacks = flame.read_folded(next(p for p in r.files if p.endswith(".stacks.txt")))
    assert data["charts"][0]["root"]["value"] == pytest.approx(sum(stacks.values()) / 1e3 / 2)


def test_read_folded_cleans_names(tmp_path):
    folded = tmp_path / "x.stacks.txt"
    gen = "smallmind_torch/generation.py(126):_generate_stream"
    folded.write_text("\n".join([
        "threading.py(1002):__bootstrap;threading.py(982):_run 40",              # another thread
        f"run.py(3):_<module>;{gen};torch/nn/modules/module.py(1778):__call_impl;"
        "<built-in_method_addmm_of_type_object_at_0x7fb4db6cea40>;aten::addmm 7",
        f"run.py(3):_<module>;{gen};<built-in_method_addmm_of_type_object_at_0x7fb4db6ce000>;"
        "aten::addmm 5",
        f"run.py(3):_<module>;{gen};torch/_ops.py(1267):___call__;smallmind::linear_out 3",
        f"run.py(3):_<module>;{gen};torch/autograd/profiler.py(844):___enter__ 9",  # profiler
        f"{gen};linear;<built-in_method_copy__of_Tensor_object_at_0x7f645bdf6270> 2",
        "not a stack line",
    ]) + "\n")
    assert flame.read_folded(folded) == {
        "generation.py:generate_stream;module.py:_call_impl;built-in method addmm;aten::addmm": 7,
        "generation.py:generate_stream;built-in method addmm;aten::addmm": 5,
        "generation.py:generate_stream;_ops.py:__call__;smallmind::linear_out": 3,
        "generation.py:generate_stream;linear;built-in method copy_": 2,
    }
    # written back and read again: the same stacks (the file keeps the clean names)
    again = flame.write_folded(flame.read_folded(folded), tmp_path / "again.stacks.txt")
    assert flame.read_folded(again) == flame.read_folded(folded)


def test_differential_flame_graph_marks_growth_and_shrinkage(tmp_path):
    g = "generation.py:generate_stream"
    before = {f"{g};forms.py:linear;aten::addmm": 4000, f"{g};attention.py:attend;aten::bmm": 3000,
              f"{g};forms.py:layer_norm_naive;aten::mean": 2000}
    after = {f"{g};forms.py:linear;aten::addmm": 1000, f"{g};attention.py:attend;aten::bmm": 6000,
             f"{g};smallmind::layer_norm_out": 500}
    page = flame.write_flame_graph(after, tmp_path / "diff.html", "phase3 vs phase1",
                                   baseline=before, per=2)
    data = page_data(page)
    assert data["diff"] and data["unit"] == "ms per token"
    now, base = ({f["name"]: f for f in frames(c["root"])} for c in data["charts"])
    assert now["aten::bmm"]["change"] > 0 and now["aten::bmm"]["after"] == pytest.approx(3.0)
    assert now["aten::addmm"]["change"] < 0 and now["aten::addmm"]["before"] == pytest.approx(2.0)
    assert now["smallmind::layer_norm_out"]["change"] == 1  # new
    assert "aten::mean" not in now and base["aten::mean"]["change"] == -1  # gone: in the baseline's graph
    assert "blue" in open(page, encoding="utf-8").read()  # the legend says how it is coloured


def test_memory_view_tells_phase0_from_phase1(written, written_phase0):
    per_token = {}
    for _, r in (written, written_phase0):
        memory = next(p for p in r.pictures if p.endswith(".memory.png"))
        assert open(memory, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
        assert set(r.allocations) == set(CATEGORIES)
        per_token[r.name] = {k: v["count"] for k, v in r.allocations.items()}
    # phase 0's per-element loops allocate in the attention labels; phase 1's batched forms do not
    assert sum(per_token["phase0"].values()) > 10 * sum(per_token["phase1"].values())
    assert per_token["phase0"]["attention_values"] > 10 * max(1, per_token["phase1"]["attention_values"])


@pytest.fixture(scope="module")
def step_events():
    """Kineto events of one profiled decode step of phase 1 (TINY)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    torch.manual_seed(1234)
    model = GPT(TINY).eval()
    with torch.no_grad(), model.using("phase1"):
        stream = iter(model.generate_stream(torch.tensor([[1, 2, 3, 4]]), 3, temperature=0.0))
        next(stream)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            with record_function(STEP_LABEL):
                next(stream)
    return prof.profiler.kineto_results.events()


def test_step_picture_names_bars_on_whole_depths(step_events):
    step_ms, bars = trace_events.step_bars(step_events)
    assert step_ms > 0 and bars and all(isinstance(b.depth, int) for b in bars)
    assert {b.label for b in bars} <= set(CATEGORIES) and "linear" in {b.name for b in bars}
    fig = pictures.draw_step(bars, step_ms, "phase1")
    ax = fig.axes[0]
    ticks = list(ax.get_yticks())
    assert ticks == list(range(len(ticks))) and len(ticks) == max(b.depth for b in bars) + 1
    texts = {t.get_text() for t in ax.texts}
    assert "linear" in texts or "addmm" in texts  # bars named where the name fits
    legend = ax.get_legend()
    assert legend.get_bbox_to_anchor().x0 >= ax.get_window_extent().x1  # beside the bars
    pictures.pyplot().close(fig)


def test_allocations_carry_their_label(step_events):
    allocs = trace_events.allocations(step_events)
    assert allocs and all(a.label in CATEGORIES and a.nbytes > 0 for a in allocs)
    table = trace_events.allocations_by_label(allocs, per=1)
    assert sum(v["count"] for v in table.values()) == len(allocs)


def test_torch_tb_profiler_parses_the_run(written):
    pytest.importorskip("torch_tb_profiler")
    _, r = written
    profiles = traces.load_tensorboard_run(r.run_dir)
    assert len(profiles) == 1
    p = profiles[0]
    views = traces.view_names(p)
    assert {"overall", "operator", "memory", "trace"} <= set(views)
    assert p.overview["steps"]["rows"]  # the overview's step-time chart has the profiled steps
    ops = {row["name"] for row in p.operation_table_by_name["data"]}
    assert "aten::bmm" in ops or "aten::baddbmm" in ops
    stats = p.get_memory_stats()
    assert stats["rows"]


def test_torch_tb_profiler_run_loader(written):
    pytest.importorskip("torch_tb_profiler")
    _, r = written
    profiles = traces.load_tensorboard_run(r.run_dir, use_loader=True)  # TensorBoard's RunLoader
    assert profiles and "operator" in traces.view_names(profiles[0])


def test_profile_cli(tmp_path, capfd):
    from smallmind_torch import cli

    rc = cli.main(["profile", "--tiny", "--phase", "max", "--logdir", str(tmp_path), "--prompt-len", "4",
                   "--threads", "1"])
    assert rc == 0
    out, err = capfd.readouterr()
    assert "profiler_start" not in err and "SyncActivityProfilerHandler" not in err  # quiet
    assert "time split" in out and "tensorboard --logdir" in out
    assert list((tmp_path / "max").glob("*.pt.trace.json"))
    # it ends listing every file it wrote, with how to open it
    listed = out[out.index("files written"):]
    for end in ("flame.html", "step.png", "memory.png", "stacks.txt", "chrome_trace.json", ".pt.trace.json"):
        path = next((tmp_path / "max").glob(f"*{end}"))
        assert str(path) in listed, end
    assert "any browser, offline" in listed and "chrome://tracing" in listed and "flamegraph.pl" in listed


def test_unavailable_preset(monkeypatch, tmp_path):
    from smallmind_torch import ops

    def boom():
        raise ops.CustomOpsUnavailable("simulated")

    monkeypatch.setattr(ops, "load_all", boom)
    r = traces.write_traces(GPT(TINY), "phase2", tmp_path)
    assert r.status == "unavailable" and "simulated" in r.reason


def test_other_python_threads_stay_out_of_the_op_table(tmp_path):
    # with_stack records every thread's Python frames; Jupyter's event loop (selectors.select in
    # a thread of its own) used to top the table of a trace written from a notebook
    import selectors
    import threading

    stop = threading.Event()

    def event_loop():
        with selectors.DefaultSelector() as sel:
            while not stop.is_set():
                sel.select(0.001)

    thread = threading.Thread(target=event_loop, daemon=True)
    thread.start()
    try:
        result = traces.write_traces(GPT(TINY).eval(), "phase1", tmp_path, prompt_len=4)
    finally:
        stop.set()
        thread.join()
    names = [op["name"] for op in result.top_ops]
    assert names and not [n for n in names if ".py(" in n or n.startswith("<built-in")], names
    assert "selectors" not in text_table(*top_ops_rows(result))


def test_logical_stacks_compare_two_phases_whose_python_differs():
    g = "generation.py:generate_stream"
    phase1 = {f"{g};_contextlib.py:decorate_context;model.py:forward_last;linear;forms.py:linear_torch;"
              "built-in method addmm;aten::addmm": 3000.0,
              f"{g};_contextlib.py:decorate_context;model.py:forward_last": 200.0,
              f"{g};_contextlib.py:decorate_context;model.py:forward_last;layernorm;aten::mean": 50.0}
    phase3 = {f"{g};runtime.py:decode_greedy;runtime.py:decode;linear;forms.py:linear_custom;"
              "_ops.py:__call__;smallmind::linear_out": 900.0,
              f"{g};runtime.py:decode_greedy;runtime.py:decode;linear;forms.py:linear_custom": 100.0}
    assert flame.logical_stacks(phase1) == {"linear;aten::addmm": 3000.0, flame.PYTHON_FRAME: 200.0,
                                            "layernorm;aten::mean": 50.0}
    assert flame.logical_stacks(phase3) == {"linear;smallmind::linear_out": 900.0,
                                            f"linear;{flame.PYTHON_FRAME}": 100.0}
    # the label is common to both sides: the differential graph compares it frame by frame
    assert {s.split(";")[0] for s in flame.logical_stacks(phase1)} & {
        s.split(";")[0] for s in flame.logical_stacks(phase3)} == {"linear"}
