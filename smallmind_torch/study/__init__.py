"""Study half: the measurements of the protocol in docs/study.md, the peers, traces, the report.
One concern per folder; modules use each other's public names only.

    seed.py      the seed study's figures (SmallMind, C#)
    results/     every result type, data only: StudyResult and its sections; to_dict / from_dict
    protocol/    how one figure is measured: settings (BenchSettings, the fixed inputs), timing,
                 profiling, machine (the machine's limits, the roofline); the check against
                 config.reference_for is the model half's (smallmind_torch/check.py), which
                 tuning.py shares
    measure/     one module per part of the study, each returning a results type: preset (the
                 main table), peer (its peers), waterfall, diff (two phases op by op), training,
                 scaling, quantized, traces
    peers/       the engines, one protocol: base (the adapter interface), engines (the adapters,
                 HF included), worker (an engine in its own process), bench (`smallmind peers`),
                 onnx_export
    report/      results -> REPORT.md, results.json, tables, plots, pictures, the terminal
    run.py       orchestration: the whole study part by part (`smallmind study`)

The calls that notebooks, the command line and experiments use are here.
"""
from .measure.diff import diff_phases, diff_profiles, profile_ops
from .measure.traces import write_traces
from .protocol.settings import BenchSettings
from .report.markdown import load_study, render_report, write_report
from .report.terminal import print_study, print_trace_summary
from .results import OpProfile, PhaseDiff, StudyResult
from .run import PARTS, STEPS, extend_study, run_steps, run_study, trace_study

__all__ = ["BenchSettings", "StudyResult", "run_study", "extend_study", "trace_study", "run_steps",
           "PARTS", "STEPS", "write_traces", "write_report", "render_report", "load_study",
           "print_study", "print_trace_summary", "diff_phases", "profile_ops", "diff_profiles",
           "PhaseDiff", "OpProfile"]
