"""REPORT.md, results.json and the terminal summary of a `results.StudyResult`.

REPORT.md tells the run's story in its own figures (nothing hand-written): the machine first,
then the seed's baseline, phase 0 and each phase (what it switched, what that bought, what
the profile shows), what each switch bought (waterfall), the machine's limits, training and
initialization, torch.compile, batches and context length, the peer engines, the traces and
how long each part of the run took. `print_study` is the terminal's short version.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..labels import CATEGORIES
from . import tables as t
from .plots import plot_all
from .results import StudyResult
from .seed import SEED

VIEWERS = ("The traces open offline: `tensorboard --logdir runs` (torch-tb-profiler; its pages "
           "load chart code from a CDN, so they need a network) and `*.chrome_trace.json` in "
           "chrome://tracing or https://ui.perfetto.dev (Perfetto's UI also loads from the "
           "network; chrome://tracing does not). Without any network, open the PNG and SVG "
           "files written beside each trace.")


def _switches(before: dict, after: dict) -> str:
    changed = [f"{k}={after[k]!r}" for k in after if before.get(k) != after[k] and k != "init"]
    return ", ".join(changed) or "no inference switch"


def _profile_summary(study: StudyResult, r) -> str:
    if not r.time_split_ms:
        return ""
    per_token = {c: r.time_split_ms[c] / study.settings["new_tokens"] for c in CATEGORIES}
    top = [c for c in sorted((c for c in per_token if c != "other"), key=per_token.get,
                             reverse=True)[:2] if per_token[c] > 0]
    if not top:  # a compiled graph runs the labelled regions inside its own kernels
        return (f" Under the profiler a token costs {sum(per_token.values()):.3g} ms, all of it "
                "outside the study's labels: the compiled graph does not keep the model's "
                "record_function regions, so the flame graph of its trace is where its time shows.")
    return (f" Under the profiler a token costs {sum(per_token.values()):.3g} ms: "
            + ", ".join(f"{c} {per_token[c]:.3g} ms ({r.time_split[c]:.0f} %)" for c in top)
            + f", and 'other' (Python, dispatch, unlabelled ops) {per_token['other']:.3g} ms "
              f"({r.time_split['other']:.0f} %).")


def _story(study: StudyResult) -> list:
    b = SEED["baseline"]
    lines = [f"The seed (SmallMind, C#, 4 cores) started at {b['tokens_per_s']} tokens/s with a "
             f"{b['prefill_ms']:.0f} ms forward pass and {b['mb_per_token']} MB allocated per token, "
             f"and aimed at {SEED['final_target']['tokens_per_s'][0]}-"
             f"{SEED['final_target']['tokens_per_s'][1]} tokens/s.", ""]
    previous, base = None, study.phases.get("phase0")
    for name, r in study.phases.items():
        if not r.ok:
            lines += [f"- **{name}**: {r.describe_status()}", ""]
            continue
        ms = 1e3 / r.tokens_per_s
        text = f"- **{name}** ({r.phase or name}): {r.tokens_per_s:,.1f} tokens/s, {ms:.3g} ms per token"
        if previous is not None and name not in ("reference", "compiled"):
            text += (f"; switched {_switches(previous.opt, r.opt)} on top of {previous.name}: "
                     f"{previous.tokens_per_s and r.tokens_per_s / previous.tokens_per_s:.2f}x")
        if base is not None and base.ok and name != "phase0":
            text += f"; {r.tokens_per_s / base.tokens_per_s:,.0f}x phase0"
        lines += [text + "." + _profile_summary(study, r), ""]
        if name not in ("reference", "compiled"):
            previous = r
    return lines


QUANTIZED_NOTE = (
    "The `weights` switch on the same weights: the two int8 fused decode steps that `max-int8` "
    "chooses between (weight-only int8 with float32 activations, and w8a8 with int8 "
    "activations on VNNI dot products where the CPU has them; the main table says which "
    "`max-int8` chose) and bf16 on the custom ops, each in its own model, alternating run by "
    "run with fp32 `max`. Then what each format costs against fp32 reference: |logit "
    "difference| over the check input, greedy tokens over 50 and 200 new tokens (a near-tie "
    "decided the other way changes every token after it), and the validation loss of the "
    "trained checkpoint.")
ENGINES_NOTE = (
    "`smallmind peers` (or this part of `make study`): ONNX Runtime runs the decode step "
    "exported from this model with its past keys and values (and, at int8, the same graph "
    "after its dynamic quantization), CTranslate2 its own conversion of the Hugging Face model "
    "(at int8, loaded with compute_type int8); every fp32 engine's greedy tokens are checked "
    "against reference before it is timed, and every int8 engine's agreement with them is "
    "measured.")


def _markdown_section(lines, title, note, body, plot=None, plots=None):
    """A section whose body is Markdown made elsewhere (None: no section)."""
    if not body:
        return
    lines += ["", f"## {title}", "", note, "", body, ""]
    if plot and plots and plot in plots:
        lines += [f"![{plot}]({Path(plots[plot]).name})", ""]


def _section(lines, title, rows_fn, note="", plot=None, plots=None):
    header, rows = rows_fn
    if not rows:
        return
    lines += ["", f"## {title}", ""]
    if note:
        lines += [note, ""]
    lines += [t.md_table(header, rows), ""]
    if plot and plots and plot in plots:
        lines += [f"![{plot}]({Path(plots[plot]).name})", ""]


def _machine_lines(study: StudyResult) -> list:
    m, s = study.machine, study.settings
    mm = ", ".join(f"{n}: {g:.1f}" for n, g in sorted(m.mm_gflops.items(), key=lambda kv: int(kv[0])))
    llc = f"{m.llc_bytes / 2**20:.0f} MiB" if m.llc_bytes else "unknown"
    return [f"- read bandwidth: {m.bandwidth_weights_gbs:.1f} GB/s over a buffer the size of the weights "
            f"({m.weight_bytes / 1e6:.1f} MB), {m.bandwidth_large_gbs:.1f} GB/s over "
            f"{m.large_bytes / 2**20:.0f} MiB (last-level cache: {llc})",
            f"- torch.mm GFLOPS by size: {mm}; peak {m.mm_peak_gflops:.1f}",
            f"- each limit is the best of {s.get('machine_samples', 1)} interleaved samples"
            + (f"; DISTURBED (samples differ by more than 1.5x): {', '.join(m.disturbed)}"
               if m.disturbed else "; no limit's samples were disturbed"),
            f"- ideal decode step (every weight read once at that bandwidth): {m.ideal_decode_ms:.3f} ms"]


def _roofline_rows(study: StudyResult) -> tuple:
    rows, sizes = [], []
    for name, r in study.phases.items():
        if r.ok and r.roofline:
            ro = r.roofline
            sizes = sizes or [k.split("_")[1] for k in ro if k.startswith("gemm_")]
            weight_bytes = ro.get("weight_bytes", study.machine.weight_bytes)
            rows.append([name, t.fmt(r.decode_ms, 3), t.fmt(weight_bytes / 1e6, 1),
                         t.fmt(ro.get("decode_gbs"), 1),
                         f"{100 * ro['decode_fraction_of_roofline']:.1f} %" if "decode_fraction_of_roofline" in ro else "-",
                         *[f"{100 * ro[f'gemm_{n}_fraction_of_torch_mm']:.0f} %" for n in sizes]])
    return ["phase", "decode ms", "weights MB / step", "weights GB/s", "decode / roofline",
            *[f"GEMM {n} / torch.mm" for n in sizes]], rows


def markdown_report(study: StudyResult, traces: "dict | None" = None, plots: "dict | None" = None) -> str:
    s, c, env = study.settings, study.model_config, study.env
    lines = ["# smallmind-torch: the study's results", ""]
    if s.get("smoke"):
        lines += [f"**{t.TINY_NOTE}**", ""]
    lines += [f"Machine: {env.get('cpu')} ({env.get('cpu_count')} logical CPUs, PyTorch CPU capability "
              f"{env.get('cpu_capability')}, C++ ops' ISA {env.get('ops_isa', 'n/a')}), "
              f"torch {env.get('torch')}, {env.get('threads')} threads, Python {env.get('python')}.", "",
              f"Model: n_layer={c['n_layer']}, n_head={c['n_head']}, n_embd={c['n_embd']}, "
              f"vocab_size={c['vocab_size']}, block_size={c['block_size']} "
              f"({study.num_parameters / 1e6:.2f} M parameters), {study.weights} weights. Protocol "
              f"(docs/study.md): greedy, {s['new_tokens']} new tokens after a {s['prompt_len']}-token "
              f"prompt, batch 1, {s['runs']} runs after a warm-up, median, prefill included; every "
              f"preset checked against `reference` first (max |logit diff| <= {s['tolerance']:g} and "
              "identical greedy tokens; a preset on int8 weights, `max-int8`, against reference's "
              "forms on the same int8 weights, its cost against fp32 shown beside).", "",
              "## The story", ""]
    lines += _story(study)
    lines += ["## Main table", "", t.md_table(*t.table_rows(study)), "",
              "Ratios are measured in the same run (absolute times drift on a shared machine). "
              + t.SPREAD_NOTE, ""]
    if plots and "tokens_per_s" in plots:
        lines += [f"![tokens_per_s]({Path(plots['tokens_per_s']).name})", ""]
    _section(lines, "Where a token's time goes (ms per token, under the profiler)", t.split_ms_rows(study),
             "Self time of each `record_function` label, nested labels excluded; `other` is "
             "everything unlabelled (Python, dispatch, sampling). The profiler adds its own cost "
             "to every label, so these are larger than the unprofiled figures above.",
             "decode_split", plots)
    _section(lines, "Share of the time (%)", t.split_rows(study))
    _section(lines, "What each switch bought", t.waterfall_rows(study),
             "Every step is checked against reference and timed with the protocol.", "waterfall", plots)
    if study.machine:
        lines += ["", "## The machine's limits and the roofline", "", *_machine_lines(study), ""]
        _section(lines, "Roofline per preset", _roofline_rows(study), plot="roofline", plots=plots)
    _section(lines, "Training: one optimizer step (forward, backward, AdamW)", t.training_rows(study),
             "Batch 8 x block_size tokens at the model's shape. The seed put the embedding "
             "gradient at 10-15 % of its training time (its bottleneck 7); the % columns are "
             "shares of the profiled step, the backward of each label linked to its forward by "
             "the profiler's sequence numbers.")
    _section(lines, "Training at the large shape (GPT-2 small, batch 1 x 256)",
             t.training_rows(study, "large"))
    _section(lines, "Initialization (the seed's bottleneck 8, one-time)", t.init_rows(study))
    _section(lines, "torch.compile", t.compile_rows(study),
             "Compile time is the first forward and generation, apart from the timed runs; "
             "`recompiles` counts graphs compiled during the timed runs (none means one graph "
             "served every position).")
    _section(lines, "Batches and context length", t.scaling_rows(study),
             "Total tokens/s at each batch size, and the decode step at the first and last "
             "positions of the context: without a KV cache the step grows with the position, "
             "with one it stays flat.", "batches", plots)
    if plots and "positions" in plots:
        lines += [f"![positions]({Path(plots['positions']).name})", ""]
    _markdown_section(lines, "Weight formats: int8, w8a8 and bf16 against fp32",
                      QUANTIZED_NOTE, study.sections.get("quantized_markdown"))
    _markdown_section(lines, "Peer engines on the same weights (each in its own process)",
                      ENGINES_NOTE, study.sections.get("engines_markdown"), "engines", plots)
    if traces:
        lines += ["", "## Profiler traces", "", VIEWERS, ""]
        for name, tr in traces.items():
            tr = tr if isinstance(tr, dict) else tr.to_dict()
            if tr["status"] == "ok":
                views = ", ".join(f"[{Path(f).suffix[1:]}]({f})" for f in tr.get("pictures", []))
                lines.append(f"- {name}: `{tr['chrome_trace']}`" + (f"; offline: {views}" if views else ""))
            else:
                lines.append(f"- {name}: {tr['status']}: {t.short(tr['reason'], 200)}")
    if plots and "memory" in plots:
        lines += ["", f"![memory]({Path(plots['memory']).name})"]
    if study.durations:
        lines += ["", "## How long each part took", "",
                  t.md_table(["part", "seconds"], [[k, f"{v:.0f}"] for k, v in study.durations.items()])]
    lines += ["", "## Environment", "", *[f"- {k}: {v}" for k, v in env.items()], ""]
    return "\n".join(lines)


def write_json(study: "StudyResult | dict", path: "str | Path") -> Path:
    """The study (or its to_dict()) as results.json-style JSON at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = study if isinstance(study, dict) else study.to_dict()
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def write_report(study: StudyResult, out_dir: "str | Path" = "results", traces: "dict | None" = None) -> dict:
    """Write REPORT.md, results.json and the plots into out_dir; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_all(study, out_dir)
    data = study.to_dict()
    if traces:
        data["traces"] = {k: (v if isinstance(v, dict) else v.to_dict()) for k, v in traces.items()}
    write_json(data, out_dir / "results.json")
    (out_dir / "REPORT.md").write_text(markdown_report(study, traces, plots), encoding="utf-8")
    return {"report": str(out_dir / "REPORT.md"), "json": str(out_dir / "results.json"), **plots}


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
    m = study.machine
    if m:
        print("\nmachine:\n" + "\n".join(_machine_lines(study)), file=out)
        print(t.text_table(*_roofline_rows(study)), file=out)
    e = study.env
    print(f"\nenvironment: torch {e['torch']}, {e['threads']} threads, {e['cpu']} "
          f"({e.get('cpu_capability', '?')}), device {e['device']}", file=out)
