"""Profiler traces: written per preset, valid JSON, parsed by torch-tb-profiler's own loader."""
import pytest
import torch

from smallmind_torch import GPT
from smallmind_torch.study.measure import traces
from smallmind_torch.study.report.tables import text_table, top_ops_rows

from helpers import TINY


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    model = GPT(TINY).eval()
    logdir = tmp_path_factory.mktemp("runs")
    result = traces.write_traces(model, "phase1", logdir, prompt_len=4, row_limit=5)
    torch.set_num_threads(old)
    return logdir, result


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
    step, flame, memory = r.pictures
    assert step.endswith(".step.png") and open(step, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    svg = open(flame, encoding="utf-8").read()
    assert flame.endswith(".flame.svg") and "<svg" in svg and "generate_stream" in svg
    assert "workspace_forward" in svg  # the model's frames are in the stacks (with_stack)
    assert memory.endswith(".memory.html") and "<html" in open(memory, encoding="utf-8").read().lower()


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
