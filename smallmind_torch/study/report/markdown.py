"""REPORT.md, results.json and the plots of a `results.StudyResult`.

REPORT.md tells the run's story in its own figures (nothing hand-written): the machine first,
then the seed's baseline, phase 0 and each phase (what it switched, what that bought, what
the profile shows), what each switch bought (waterfall) and changed op by op (the diffs),
the machine's limits, training and initialization, torch.compile, batches and context length,
the weight formats, the peer engines, the traces and how long each part of the run took. It
renders from the results alone: `render_report(load_study("results/results.json"), "results")` writes it again.
"""
from __future__ import annotations

import json
from pathlib import Path

from ...labels import CATEGORIES
from ..results import StudyResult
from ..seed import SEED
from . import tables as t
from .diff_tables import diff_markdown
from .peer_tables import markdown as engines_markdown
from .speculative_tables import NOTE as SPECULATIVE_NOTE
from .speculative_tables import markdown as speculative_markdown
from .plots import plot_all

VIEWERS = ("Beside each trace, and copied here (`traces/<phase>/`), views that open with no "
           "network: `flame.html`, an interactive flame graph of the call stacks (Python frames, "
           "profiler labels, aten:: and smallmind:: ops; hover, click to zoom, search) in any "
           "browser; `step.png`, one decode step on a time axis; `memory.png`, the allocations "
           "over the profiled steps by label. The full traces stay in `runs/`: "
           "`*.chrome_trace.json` in chrome://tracing (offline) or https://ui.perfetto.dev (its "
           "page needs the network), and `tensorboard --logdir runs` (torch-tb-profiler, whose "
           "page loads chart code from the network).")


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
    "`max-int8` chose), `max-int4` (group-wise int4 weights with int8 activations) and bf16 on "
    "the custom ops, each in its own model, alternating run by "
    "run with fp32 `max`. Then what each format costs against fp32 reference: the scoreboard "
    "(teacher-forced over an evaluation set: perplexity, KL divergence, top token, the correct "
    "token's probability), |logit difference| over the check input, greedy tokens over 50 and "
    "200 new tokens after each named prompt, and the validation loss of the trained checkpoint.")
DIFFS_NOTE = (
    "`smallmind diff A B` (or this part of `make study`), switch by switch: each preset's "
    "decode steps under the profiler (after the prefill and first token; phase0 over fewer "
    "steps), per `record_function` label and ATen or custom op, per generated token, A -> B: "
    "calls, self time (its time minus that of the labels and ops right inside it: a label's "
    "self time is the Python between its ops), allocations and their bytes, the rows whose self time "
    "changed most first. The figures come from a pass without call-stack recording; the "
    "flame graphs from a second pass with it (the Python tracer slows every call, so their "
    "times are larger: compare them within a graph). Each pair's differential flame graph "
    "(one HTML file, offline) shows B's self time by profiler label and op against A's. The "
    "main table's figures are over the whole 50-token generation, prefill included; these are "
    "over a few decode steps alone (phase1's workspace still grows in its first steps), so "
    "they differ from it where the prefill or the first steps differ from the rest.")
DIFF_ROWS = 10  # rows of each pair's table
ENGINES_NOTE = (
    "`smallmind peers` (or this part of `make study`): ONNX Runtime runs the decode step "
    "exported from this model with its past keys and values (and, at int8, the same graph "
    "after its dynamic quantization), CTranslate2 its own conversion of the Hugging Face model "
    "(at int8, loaded with compute_type int8); every fp32 engine's greedy tokens are checked "
    "against reference before it is timed, and every int8 engine's agreement with them is "
    "measured: at the seed shape after the study prompt, at GPT-2 small (random weights) after "
    "random token ids.")


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


def _quality_markdown(result) -> str:
    """The scoreboard and its note (none for results from before it)."""
    if not result.quality:
        return ""
    e = result.settings.get("quality", {})
    return (f"The scoreboard, teacher-forced over {e.get('set', 'an evaluation set')}: "
            f"{e.get('windows')} non-overlapping windows of {e.get('block_size')} tokens, "
            f"{e.get('positions')} positions, each scored under fp32 reference and under the "
            "format after the same fp32 prefix (one near-tie changes one position, not every "
            "later one). PPL = exp(mean negative log-likelihood), ± one standard error of the "
            "per-token figures; delta NLL is the mean of the paired per-token differences "
            "(format - fp32), a change is real where it is several of its SEs from 0; KL is "
            "KL(p_fp32 || p_format) of the next-token distribution per position; same top token "
            "is the share of positions whose most likely token is fp32's; delta p is the change "
            "in the correct next token's probability, p_format - p_fp32, in % points "
            "(llama.cpp's `perplexity --kl-divergence` reports the same figures).\n\n"
            + t.md_table(*t.format_quality_rows(result.quality)) + "\n\n")


def _quantized_markdown(study: StudyResult) -> "str | None":
    if study.quantized is None:
        return None
    prompts = study.quantized.settings.get("prompts", {})
    named = "; ".join(f"**{name}**: {text}" for name, text in prompts.items())
    return (t.md_table(*t.format_speed_rows(study.quantized)) + "\n\n"
            + _quality_markdown(study.quantized)
            + (f"The greedy tokens are compared after each prompt of this set: {named}. "
               "The main table's figure is the study prompt's first 50. One near-tie decided "
               "the other way changes every token after it, so two prompts can give 100% and "
               "a few %: greedy agreement is a cliff, not a measure of closeness; the "
               "scoreboard, the logit differences and the validation loss are.\n\n" if named else "")
            + t.md_table(*t.format_accuracy_rows(study.quantized)) + "\n")


def markdown_report(study: StudyResult, plots: "dict | None" = None) -> str:
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
              f"prompt{f' (the study prompt: {study.prompt})' if study.prompt else ''}, batch 1, "
              f"{s['runs']} runs after a warm-up, median, prefill included; every "
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
    _markdown_section(lines, "What each switch changed, read off the profiler", DIFFS_NOTE,
                      "\n".join(diff_markdown(d, DIFF_ROWS) for d in study.diffs))
    if study.machine:
        lines += ["", "## The machine's limits and the roofline", "", *t.machine_lines(study), ""]
        _section(lines, "Roofline per preset", t.roofline_rows(study), plot="roofline", plots=plots)
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
             "served every position). `compile=cpp-wrapper` calls Inductor's kernels from its "
             "generated C++ instead of Python; `compile=aot-inductor` runs the decode step as an "
             "AOTInductor package (exported, compiled ahead of time, no Dynamo guard; its graphs "
             "are not Dynamo's, so none are counted). Inductor's `freezing` is not among them: it "
             "folds the KV cache into constants and changes the tokens (docs/study.md).")
    _section(lines, "Batches and context length", t.scaling_rows(study),
             "Total tokens/s at each batch size, and the decode step at the first and last "
             "positions of the context: without a KV cache the step grows with the position, "
             "with one it stays flat.", "batches", plots)
    if plots and "positions" in plots:
        lines += [f"![positions]({Path(plots['positions']).name})", ""]
    _markdown_section(lines, "Weight formats: int8, w8a8, int4 and bf16 against fp32",
                      QUANTIZED_NOTE, _quantized_markdown(study))
    _markdown_section(lines, "Speculative decoding: fp32 max's own tokens, several per call",
                      SPECULATIVE_NOTE, study.speculative and speculative_markdown(study.speculative))
    _markdown_section(lines, "Peer engines on the same weights (each in its own process)",
                      ENGINES_NOTE, study.engines and engines_markdown(study.engines), "engines", plots)
    if study.traces:
        lines += ["", "## Profiler traces", "", VIEWERS, ""]
        for name, tr in study.traces.items():
            if tr.status == "ok":
                views = ", ".join(f"[{Path(f).name.removeprefix(tr.name + '.')}]({f})"
                                  for f in tr.pictures)
                lines.append(f"- {name}: `{tr.chrome_trace}`" + (f"; offline: {views}" if views else ""))
            else:
                lines.append(f"- {name}: {tr.status}: {t.short(tr.reason, 200)}")
    if plots and "memory" in plots:
        lines += ["", f"![memory]({Path(plots['memory']).name})"]
    if study.durations:
        lines += ["", "## How long each part took", "",
                  t.md_table(["part", "seconds"], [[k, f"{v:.0f}"] for k, v in study.durations.items()])]
    lines += ["", "## Environment", "", *[f"- {k}: {v}" for k, v in env.items()], ""]
    return "\n".join(lines)


def write_json(data: dict, path: "str | Path") -> Path:
    """`data` (a result's to_dict()) as JSON at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def load_study(path: "str | Path") -> StudyResult:
    """The StudyResult of a results.json (write_report's)."""
    return StudyResult.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def render_report(study: StudyResult, out_dir: "str | Path" = "results") -> dict:
    """Write REPORT.md and the plots of `study` into out_dir; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_all(study, out_dir)
    (out_dir / "REPORT.md").write_text(markdown_report(study, plots), encoding="utf-8")
    return {"report": str(out_dir / "REPORT.md"), **plots}


def write_report(study: StudyResult, out_dir: "str | Path" = "results") -> dict:
    """Write results.json, REPORT.md and the plots into out_dir; return their paths."""
    json_path = write_json(study.to_dict(), Path(out_dir) / "results.json")
    return {**render_report(study, out_dir), "json": str(json_path)}
