"""The terminal's short versions: the study's main table and limits (`print_study`), a trace's
summary (`print_trace_summary`)."""
from __future__ import annotations

import sys

from ..results import StudyResult, TraceResult
from . import tables as t


def print_study(study: StudyResult, out=None) -> None:
    """The main table, what max ran as, the time split, the machine's limits and the roofline
    fractions, as text."""
    out = out or sys.stdout
    c = study.model_config
    print(f"\nmodel: {c['n_layer']} layers, {c['n_head']} heads, n_embd {c['n_embd']}, vocab "
          f"{c['vocab_size']}, block {c['block_size']} ({study.num_parameters / 1e6:.2f} M params, "
          f"{study.weights}); {study.settings['new_tokens']} new tokens, {study.settings['runs']} runs",
          file=out)
    if study.settings.get("smoke"):
        print(f"\n{t.TINY_NOTE}", file=out)
    print(t.format_table(study), file=out)
    print(t.SPREAD_NOTE.replace("`", ""), file=out)
    if "max" in study.phases and study.phases["max"].phase:
        print(f"\n{study.phases['max'].phase}", file=out)
    if any(r.ok and r.time_split for r in study.phases.values()):
        print("\ntime split (% of profiled generation time):", file=out)
        print(t.text_table(*t.split_rows(study)), file=out)
    if study.machine:
        print("\nmachine:\n" + "\n".join(t.machine_lines(study)), file=out)
        print(t.text_table(*t.roofline_rows(study)), file=out)
    e = study.env
    print(f"\nenvironment: torch {e['torch']}, {e['threads']} threads, {e['cpu']} "
          f"({e.get('cpu_capability', '?')}), device {e['device']}", file=out)


def print_trace_summary(result: TraceResult, out=None) -> None:
    """What ran, its top ops, its time split, then each file written and how to open it."""
    out = out or sys.stdout
    if result.status != "ok":
        print(f"[{result.name}] {result.status}: {result.reason}", file=out)
        return
    print(f"[{result.name}] {result.phase}", file=out)
    print(t.text_table(*t.top_ops_rows(result)), file=out)
    print(f"[{result.name}] time split: {t.describe_split(result.time_split)}", file=out)
    print(f"[{result.name}] files written (run {result.run_dir}), and how to open them:", file=out)
    for path, note in result.files.items():
        print(f"  {path}\n      {note}", file=out)
