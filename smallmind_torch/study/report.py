"""Tables, the Markdown report and the plots of a `results.StudyResult`.

- `format_table(study)` / `print_study(study)`: the main table as monospaced text (CLI, scripts);
- `markdown_report(study, traces)`: results/REPORT.md's text;
- `write_json(study, path)`: results.json;
- `write_report(study, out_dir, traces)`: REPORT.md, results.json and the PNG plots
  (tokens/s per phase with the seed's and the peer's bars, memory per token, time split).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from ..labels import CATEGORIES
from .results import StudyResult
from .seed import SEED, SEED_SPLIT

PLOTS = {"tokens_per_s": "tokens_per_s.png", "memory": "memory_per_token.png",
         "time_split": "time_split.png"}


def _fmt(value, digits=1, unit=""):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, tuple):
        return f"{value[0]:g}-{value[1]:g}{unit}"
    if isinstance(value, str):
        return value
    if abs(value) >= 100 or digits == 0:
        return f"{value:.0f}{unit}"
    if abs(value) < 0.1 and value != 0:
        return f"{value:.3g}{unit}"
    return f"{value:.{digits}f}{unit}"


def _spread(value, result, figure, digits=1):
    """A figure with its spread: "912 ±6%" (half the min-max range of its runs, relative to the
    median); a trailing "!" when the runs differ by more than results.DISTURBED_RATIO."""
    text = _fmt(value, digits)
    s = result.spread.get(figure)
    if value is None or not s or s["runs"] < 2 or not s["median"]:
        return text
    half_range = 50 * (s["max"] - s["min"]) / s["median"]
    return f"{text} ±{half_range:.0f}%{'!' if s['disturbed'] else ''}"


SPREAD_NOTE = ("`±` is half the range of a figure's runs relative to their median; `!` marks "
               "runs that differ by more than 1.5x: the machine was disturbed during them, so "
               "compare those figures with care.")
TINY_NOTE = ("TINY MODE: a smoke run on a tiny shape with a few tokens. Its figures and ratios "
             "say nothing about performance; run without --tiny for the study.")


def _largest_gemm(result):
    if not result.gflops:
        return None, None
    n = max(result.gflops, key=int)
    return n, result.gflops[n]


def table_rows(study: StudyResult) -> tuple:
    """(header, rows): one row per seed line, preset and peer; every cell a string."""
    sizes = sorted({int(n) for r in study.phases.values() for n in r.gflops} or {512})
    gemm_n = sizes[-1]
    header = ["phase", "tokens/s", "decode ms", "prefill ms", "MB/token", "allocs/token",
              f"GFLOPS@{gemm_n}", "x phase0", *[f"x {p}" for p in study.peers], "check"]
    ratios = study.ratios()
    rows = []
    b, f = SEED["baseline"], SEED["final_target"]
    peer_blank = ["-"] * len(study.peers)
    rows.append(["seed baseline (.NET)", _fmt(b["tokens_per_s"]), "-", _fmt(b["prefill_ms"]),
                 _fmt(b["mb_per_token"]), f"({b['gc_gen0_per_50_tokens']} GC gen0/50 tok)",
                 _fmt(b["gflops_512"]), "-", *peer_blank, "seed"])
    rows.append(["seed final target", _fmt(f["tokens_per_s"]), "-", _fmt(f["prefill_ms"], unit=" "),
                 _fmt(f["mb_per_token"]), f"(<{f['gc_gen0_per_50_tokens']} GC gen0)",
                 _fmt(f["gflops_512"]), "-", *peer_blank, "seed"])
    for name, r in study.phases.items():
        if r.ok:
            g = r.gflops.get(gemm_n, r.gflops.get(str(gemm_n)))
            ra = ratios.get(name, {})
            rows.append([name, _spread(r.tokens_per_s, r, "tokens_per_s"),
                         _spread(r.decode_ms, r, "decode_ms", 2), _spread(r.prefill_ms, r, "prefill_ms", 2),
                         _fmt(r.mb_per_token, 3), _fmt(r.allocs_per_token), _fmt(g),
                         _fmt(ra.get("speedup_vs_phase0"), 2, "x"),
                         *[_fmt(ra.get(f"speedup_vs_{p}"), 2, "x") for p in study.peers],
                         r.describe_status()])
        else:
            rows.append([name, *["-"] * (len(header) - 2), r.describe_status()])
    for name, p in study.peers.items():
        label = {"hf": "HF transformers generate"}.get(name, name)
        if p.ok:
            base = study.phases.get("phase0")
            x0 = (p.tokens_per_s / base.tokens_per_s) if base is not None and base.ok else None
            rows.append([label, _spread(p.tokens_per_s, p, "tokens_per_s"),
                         _spread(p.decode_ms, p, "decode_ms", 2), "-", _fmt(p.mb_per_token, 3),
                         _fmt(p.allocs_per_token), "-", _fmt(x0, 2, "x"),
                         *["1.00x" if q == name else "-" for q in study.peers], p.describe_status()])
        else:
            rows.append([label, *["-"] * (len(header) - 2), p.describe_status()])
    return header, rows


def _short(text, width=60):
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 3] + "..."


def format_table(study: StudyResult, width: int = 60) -> str:
    header, rows = table_rows(study)
    rows = [r[:-1] + [_short(r[-1], width)] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i and i < len(cells) - 1 else str(c).ljust(w)
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    out = [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def format_split_table(study: StudyResult) -> str:
    header, rows = split_rows(study)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths))) for r in [header, *rows])


def split_rows(study: StudyResult) -> tuple:
    header = ["phase", *CATEGORIES]
    rows = [["seed baseline", *[SEED_SPLIT.get(c, "-") for c in CATEGORIES]]]
    for name, r in study.phases.items():
        if r.ok and r.time_split:
            rows.append([name, *[f"{r.time_split.get(c, 0.0):.1f}" for c in CATEGORIES]])
    return header, rows


def _md_table(header, rows) -> str:
    esc = lambda c: str(c).replace("|", "\\|")
    out = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(out)


def markdown_report(study: StudyResult, traces: "dict | None" = None, plots: "dict | None" = None) -> str:
    s = study.settings
    c = study.model_config
    env = study.env
    lines = ["# smallmind-torch: the study's results", ""]
    if s.get("tiny"):
        lines += [f"**{TINY_NOTE}**", ""]
    lines.append(f"Model: n_layer={c['n_layer']}, n_head={c['n_head']}, n_embd={c['n_embd']}, "
                 f"vocab_size={c['vocab_size']}, block_size={c['block_size']} "
                 f"({study.num_parameters / 1e6:.2f} M parameters), {study.weights} weights. "
                 f"Protocol (docs/study.md): greedy, {s['new_tokens']} new tokens after a fixed "
                 f"{s['prompt_len']}-token prompt, batch 1, {s['runs']} runs after one warm-up, "
                 f"median, prefill included; prefill = median full forward at T = block_size; memory "
                 f"from the profiler's `[memory]` events over the whole generation / "
                 f"{s['new_tokens']}; every preset checked against `reference` on the same weights "
                 f"(max |logit diff| <= {s['tolerance']:g} and identical greedy tokens).")
    lines += ["", "## Main table", "", _md_table(*table_rows(study)), ""]
    if "max" in study.phases and study.phases["max"].phase:
        lines += [f"`max` is chosen per machine (smallmind_torch/phases.py); in this run: "
                  f"{study.phases['max'].phase}.", ""]
    lines.append("Speed-ups are ratios measured in the same run (absolute times drift on a shared "
                 "machine). The seed's figures were measured on a 4-core x64 machine with .NET 10; "
                 "its allocation count is GC gen0 collections, ours the allocator calls. "
                 + SPREAD_NOTE)
    lines += ["", "## Against the seed", ""]
    seed_rows = []
    b, f = SEED["baseline"], SEED["final_target"]
    ratios = study.ratios()
    for name, r in study.phases.items():
        if not r.ok:
            continue
        lo, hi = f["tokens_per_s"]
        mlo, mhi = f["mb_per_token"]
        seed_rows.append([name, _fmt(r.tokens_per_s), f"{r.tokens_per_s / b['tokens_per_s']:.1f}x",
                          "yes" if r.tokens_per_s >= lo else "no",
                          _fmt(r.mb_per_token, 3), "yes" if r.mb_per_token is not None and r.mb_per_token <= mhi else "no"])
    lines.append(_md_table(["phase", "tokens/s", "vs seed baseline 6.2 tok/s",
                            f"meets seed final target ({f['tokens_per_s'][0]}-{f['tokens_per_s'][1]} tok/s)",
                            "MB/token", f"meets {f['mb_per_token'][0]}-{f['mb_per_token'][1]} MB target"],
                           seed_rows))
    lines += ["", "## Time split per phase (% of profiled generation time)", "",
              _md_table(*split_rows(study)), "",
              "Self time of each `record_function` label (nested labels excluded); `other` is "
              "everything else (embedding, GELU, residual adds, sampling, Python)."]
    if study.machine:
        m = study.machine
        lines += ["", "## Machine limits and roofline (measured in the same run)", ""]
        mm = ", ".join(f"{n}: {g:.1f}" for n, g in sorted(m.mm_gflops.items(), key=lambda t: int(t[0])))
        llc = f"{m.llc_bytes / 2**20:.0f} MiB" if m.llc_bytes else "unknown"
        lines += [f"- memory bandwidth (read): {m.bandwidth_weights_gbs:.1f} GB/s over a buffer the size "
                  f"of the weights ({m.weight_bytes / 1e6:.1f} MB), {m.bandwidth_large_gbs:.1f} GB/s over "
                  f"{m.large_bytes / 2**20:.0f} MiB (last-level cache: {llc})",
                  f"- torch.mm GFLOPS by size: {mm}; peak {m.mm_peak_gflops:.1f}",
                  f"- each limit is the best of {s.get('machine_samples', 1)} interleaved samples"
                  + (f"; DISTURBED (samples differ by more than 1.5x): {', '.join(m.disturbed)}"
                     if m.disturbed else "; no sample set was disturbed"),
                  f"- ideal decode step (weights read once at the weights-sized bandwidth): "
                  f"{m.ideal_decode_ms:.3f} ms ({m.ideal_decode_ms_dram:.3f} ms at DRAM bandwidth)", ""]
        rows = []
        for name, r in study.phases.items():
            if r.ok:
                ro = r.roofline
                gk = [k for k in ro if k.startswith("gemm_")]
                rows.append([name, _fmt(r.decode_ms, 3), _fmt(ro.get("ideal_decode_ms"), 3),
                             _fmt(ro.get("decode_gbs"), 1),
                             f"{100 * ro['decode_fraction_of_roofline']:.1f} %" if "decode_fraction_of_roofline" in ro else "-",
                             *[f"{100 * ro[k]:.0f} %" for k in gk]])
        gsizes = [k.split("_")[1] for k in next((r.roofline for r in study.phases.values() if r.ok and r.roofline), {})
                  if k.startswith("gemm_")]
        lines.append(_md_table(["phase", "decode ms", "ideal ms", "weights GB/s", "decode / roofline",
                                *[f"GEMM {n} / torch.mm" for n in gsizes]], rows))
    if traces:
        lines += ["", "## Profiler traces", "",
                  "`tensorboard --logdir runs` (with torch-tb-profiler) shows one run per phase; the "
                  "`*.chrome_trace.json` files open in chrome://tracing or https://ui.perfetto.dev.", ""]
        tables = []
        for name, t in traces.items():
            table = getattr(t, "table", "")
            t = t if isinstance(t, dict) else t.to_dict()
            if t["status"] == "ok":
                lines.append(f"- {name}: `{t['run_dir']}` (Chrome trace `{t['chrome_trace']}`)")
                if table:
                    tables.append(f"### {name}: top ops (`key_averages()`, last active profiler cycle)\n\n"
                                  f"```\n{table.rstrip()}\n```\n")
            else:
                lines.append(f"- {name}: {t['status']}: {_short(t['reason'], 200)}")
        if tables:
            lines += ["", *tables]
    if plots:
        lines += ["", "## Plots", ""]
        for key, path in plots.items():
            lines.append(f"![{key}]({Path(path).name})")
    lines += ["", "## Environment", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    lines.append("")
    return "\n".join(lines)


def plot_all(study: StudyResult, out_dir: "str | Path") -> dict:
    """Write the PNG plots; return {kind: path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ok = {n: r for n, r in study.phases.items() if r.ok}
    peers = {n: p for n, p in study.peers.items() if p.ok}
    paths = {}

    # tokens/s: seed baseline and final target, every preset, the peer(s)
    names = ["seed baseline", "seed target (mid)", *ok, *[f"{n} (peer)" for n in peers]]
    values = [SEED["baseline"]["tokens_per_s"], sum(SEED["final_target"]["tokens_per_s"]) / 2,
              *[r.tokens_per_s for r in ok.values()], *[p.tokens_per_s for p in peers.values()]]
    colors = ["#999999", "#cccccc", *["#1f77b4"] * len(ok), *["#ff7f0e"] * len(peers)]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4))
    ax.bar(names, values, color=colors)
    ax.set_yscale("log")
    ax.set_ylabel("tokens / s (log)")
    ax.set_title("Greedy generation speed per phase")
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    paths["tokens_per_s"] = out_dir / PLOTS["tokens_per_s"]
    fig.savefig(paths["tokens_per_s"], dpi=100)
    plt.close(fig)

    # memory per token
    names = ["seed baseline", *[n for n, r in ok.items() if r.mb_per_token is not None],
             *[f"{n} (peer)" for n, p in peers.items() if p.mb_per_token is not None]]
    values = [SEED["baseline"]["mb_per_token"], *[r.mb_per_token for r in ok.values() if r.mb_per_token is not None],
              *[p.mb_per_token for p in peers.values() if p.mb_per_token is not None]]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4))
    ax.bar(names, [max(v, 1e-6) for v in values], color=["#999999"] + ["#2ca02c"] * (len(names) - 1))
    ax.set_yscale("log")
    ax.set_ylabel("MB allocated / token (log)")
    ax.set_title("Memory allocated per generated token")
    for i, v in enumerate(values):
        ax.text(i, max(v, 1e-6), f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    paths["memory"] = out_dir / PLOTS["memory"]
    fig.savefig(paths["memory"], dpi=100)
    plt.close(fig)

    # stacked time split
    split = {n: r.time_split for n, r in ok.items() if r.time_split}
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(split) + 3), 4))
    bottom = [0.0] * len(split)
    cmap = plt.get_cmap("tab10")
    for i, cat in enumerate(CATEGORIES):
        vals = [s.get(cat, 0.0) for s in split.values()]
        ax.bar(list(split), vals, bottom=bottom, label=cat, color=cmap(i))
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("% of profiled generation time")
    ax.set_ylim(0, 100)
    ax.set_title("Time split per phase (record_function labels)")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    paths["time_split"] = out_dir / PLOTS["time_split"]
    fig.savefig(paths["time_split"], dpi=100)
    plt.close(fig)
    return {k: str(v) for k, v in paths.items()}


def write_report(study: StudyResult, out_dir: "str | Path" = "results", traces: "dict | None" = None) -> dict:
    """Write REPORT.md, results.json and the plots into out_dir; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_all(study, out_dir)
    data = study.to_dict()
    if traces:
        data["traces"] = {k: (t if isinstance(t, dict) else t.to_dict()) for k, t in traces.items()}
    write_json(data, out_dir / "results.json")
    (out_dir / "REPORT.md").write_text(markdown_report(study, traces, plots), encoding="utf-8")
    return {"report": str(out_dir / "REPORT.md"), "json": str(out_dir / "results.json"), **plots}


def write_json(study: "StudyResult | dict", path: "str | Path") -> Path:
    """The study (or its to_dict()) as results.json-style JSON at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = study if isinstance(study, dict) else study.to_dict()
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def print_study(study: StudyResult, out=None) -> None:
    """The main table, which configuration each preset ran, the time split, the machine's limits
    and the roofline fractions, as text."""
    out = out or sys.stdout
    c = study.model_config
    print(f"\nmodel: {c['n_layer']} layers, {c['n_head']} heads, n_embd {c['n_embd']}, vocab "
          f"{c['vocab_size']}, block {c['block_size']} ({study.num_parameters / 1e6:.2f} M params, "
          f"{study.weights}); {study.settings['new_tokens']} new tokens, {study.settings['runs']} runs",
          file=out)
    if study.settings.get("tiny"):
        print(f"\n{TINY_NOTE}", file=out)
    print(format_table(study), file=out)
    print(SPREAD_NOTE.replace("`", ""), file=out)
    if "max" in study.phases and study.phases["max"].phase:
        print(f"\n{study.phases['max'].phase}", file=out)
    if any(r.ok and r.time_split for r in study.phases.values()):
        print("\ntime split (% of profiled generation time):", file=out)
        print(format_split_table(study), file=out)
    m = study.machine
    if m:
        print(f"\nmachine: read bandwidth {m.bandwidth_weights_gbs:.1f} GB/s (weights-sized "
              f"{m.weight_bytes / 1e6:.2f} MB buffer), {m.bandwidth_large_gbs:.1f} GB/s "
              f"({m.large_bytes / 2**20:.0f} MiB buffer); torch.mm peak {m.mm_peak_gflops:.1f} GFLOPS; "
              f"ideal decode step {m.ideal_decode_ms:.3f} ms; best of {study.settings.get('machine_samples', 1)} "
              f"interleaved samples", file=out)
        if m.disturbed:
            print(f"  DISTURBED: the samples of {', '.join(m.disturbed)} differ by more than 1.5x; "
                  f"these limits are unreliable in this run", file=out)
        for name, r in study.phases.items():
            if r.ok and r.roofline.get("decode_fraction_of_roofline") is not None:
                gemm = {k.split("_")[1]: v for k, v in r.roofline.items() if k.startswith("gemm_")}
                gtxt = ", ".join(f"GEMM{n} {100 * v:.0f}% of torch.mm" for n, v in gemm.items())
                print(f"  {name:10s} decode {r.decode_ms:.3f} ms ({r.roofline['decode_gbs']:.1f} GB/s "
                      f"of weights) = {100 * r.roofline['decode_fraction_of_roofline']:.1f}% of "
                      f"roofline; {gtxt}", file=out)
    e = study.env
    print(f"\nenvironment: torch {e['torch']}, {e['threads']} threads, {e['cpu']} "
          f"({e.get('cpu_capability', '?')}), device {e['device']}", file=out)
