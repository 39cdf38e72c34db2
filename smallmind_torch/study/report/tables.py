"""The study's tables, as rows of strings: the main table, the time split, the machine's limits
and the roofline, the tables of the parts beyond it (waterfall, training, init, compile,
scaling, weight formats) and a trace's top ops. Rendered as Markdown (`md_table`) for
REPORT.md and as monospaced text (`text_table`) for the terminal."""
from __future__ import annotations

import math

from ...labels import CATEGORIES
from ..results import QuantizedResult, StudyResult, TraceResult
from ..seed import SEED, SEED_SPLIT


def fmt(value, digits=1, unit=""):
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


def fmt_bytes(nbytes) -> str:
    """Bytes with a unit that keeps the figure readable: "14.3 MB", "4.89 kB", "19 B"; a (lo, hi)
    range of MB (the seed's targets) as "3-5 MB"."""
    if isinstance(nbytes, tuple):
        return f"{nbytes[0] / 1e6:g}-{nbytes[1] / 1e6:g} MB"
    if nbytes is None or not math.isfinite(nbytes):
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes:.0f} B"


def with_spread(value, result, figure, digits=1):
    """A figure with its spread: "912 ±6%" (half the min-max range of its runs, relative to the
    median); a trailing "!" when the runs were disturbed (timing.spread)."""
    return with_spread_value(value, result.spread.get(figure), digits)


SPREAD_NOTE = ("`±` is half the range of a figure's runs relative to their median; `!` marks "
               "runs that differ by more than 1.5x, or during which other processes kept a "
               "quarter of a core or more busy (/proc/stat, machine_load.py): the machine was "
               "disturbed during them, so compare those figures with care.")
TINY_NOTE = ("TINY MODE: a smoke run on a tiny shape with a few tokens. Its figures and ratios "
             "say nothing about performance; run without --tiny for the study.")


def _seed_bytes(mb) -> str:
    """The seed's MB per token (a figure or a (lo, hi) range) as fmt_bytes writes bytes."""
    return fmt_bytes(tuple(1e6 * v for v in mb) if isinstance(mb, tuple) else 1e6 * mb)


def table_rows(study: StudyResult) -> tuple:
    """(header, rows): one row per seed line, preset and peer; every cell a string."""
    sizes = sorted({int(n) for r in study.phases.values() for n in r.gflops} or {512})
    gemm_n = sizes[-1]
    header = ["phase", "tokens/s", "decode ms", "prefill ms", "memory/token", "allocs/token",
              f"GFLOPS@{gemm_n}", "x phase0", *[f"x {p}" for p in study.peers], "check"]
    ratios = study.ratios()
    rows = []
    b, f = SEED["baseline"], SEED["final_target"]
    peer_blank = ["-"] * len(study.peers)
    rows.append(["seed baseline (.NET)", fmt(b["tokens_per_s"]), "-", fmt(b["prefill_ms"]),
                 _seed_bytes(b["mb_per_token"]), f"({b['gc_gen0_per_50_tokens']} GC gen0/50 tok)",
                 fmt(b["gflops_512"]), "-", *peer_blank, "seed"])
    rows.append(["seed final target", fmt(f["tokens_per_s"]), "-", fmt(f["prefill_ms"], unit=" "),
                 _seed_bytes(f["mb_per_token"]), f"(<{f['gc_gen0_per_50_tokens']} GC gen0)",
                 fmt(f["gflops_512"]), "-", *peer_blank, "seed"])
    for name, r in study.phases.items():
        if r.ok:
            g = r.gflops.get(gemm_n)
            ra = ratios.get(name, {})
            rows.append([name, with_spread(r.tokens_per_s, r, "tokens_per_s"),
                         with_spread(r.decode_ms, r, "decode_ms", 2), with_spread(r.prefill_ms, r, "prefill_ms", 2),
                         fmt_bytes(r.bytes_per_token), fmt(r.allocs_per_token), fmt(g),
                         fmt(ra.get("speedup_vs_phase0"), 2, "x"),
                         *[fmt(ra.get(f"speedup_vs_{p}"), 2, "x") for p in study.peers],
                         r.describe_status()])
        else:
            rows.append([name, *["-"] * (len(header) - 2), r.describe_status()])
    for name, p in study.peers.items():
        label = {"hf": "HF transformers generate"}.get(name, name)
        if p.ok:
            base = study.phases.get("phase0")
            x0 = (p.tokens_per_s["median"] / base.tokens_per_s) if base is not None and base.ok else None
            rows.append([label, spread_cell(p.tokens_per_s), spread_cell(p.decode_ms, 2), "-",
                         fmt_bytes(p.bytes_per_token), fmt(p.allocs_per_token), "-", fmt(x0, 2, "x"),
                         *["1.00x" if q == name else "-" for q in study.peers], p.describe_status()])
        else:
            rows.append([label, *["-"] * (len(header) - 2), p.describe_status()])
    return header, rows


def short(text, width=60):
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 3] + "..."


def format_table(study: StudyResult, width: int = 60) -> str:
    header, rows = table_rows(study)
    rows = [r[:-1] + [short(r[-1], width)] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i and i < len(cells) - 1 else str(c).ljust(w)
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    out = [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def split_rows(study: StudyResult) -> tuple:
    header = ["phase", *CATEGORIES]
    rows = [["seed baseline", *[SEED_SPLIT.get(c, "-") for c in CATEGORIES]]]
    for name, r in study.phases.items():
        if r.ok and r.time_split:
            rows.append([name, *[f"{r.time_split.get(c, 0.0):.1f}" for c in CATEGORIES]])
    return header, rows


def md_table(header, rows) -> str:
    esc = lambda c: str(c).replace("|", "\\|")
    out = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(out)


def text_table(header, rows) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths))) for r in [header, *rows])


def split_ms_rows(study: StudyResult) -> tuple:
    """Absolute ms per generated token by category (under the profiler)."""
    n = study.settings["new_tokens"]
    header = ["phase", "ms/token", *CATEGORIES]
    rows = []
    for name, r in study.phases.items():
        if r.ok and r.time_split_ms:
            per_token = {c: r.time_split_ms.get(c, 0.0) / n for c in CATEGORIES}
            rows.append([name, f"{sum(per_token.values()):.3g}",
                         *[f"{per_token[c]:.3g}" for c in CATEGORIES]])
    return header, rows


def waterfall_rows(study: StudyResult) -> tuple:
    rows, previous = [], None
    for r in study.waterfall:
        ms = r.ms_per_token
        factor = fmt(previous / ms, 2, "x") if previous and ms else "-"
        rows.append([r.label, fmt(r.tokens_per_s), fmt(ms, 3), factor,
                     "ok" if r.status == "ok" else f"{r.status}: {short(r.reason, 80)}"])
        previous = ms or previous
    return ["step", "tokens/s", "ms/token", "x step above", "status"], rows


def training_rows(study: StudyResult, key: str = "model") -> tuple:
    cats = ("embedding_backward", "layernorm_backward", "attention_backward", "linear_backward",
            "optimizer")
    header = ["preset", "ms/step", "train tokens/s", "allocs/step", "MB/step",
              *[f"% {c}" for c in cats]]
    rows = []
    for r in study.training.get(key, []):
        if not r.ok:
            rows.append([r.name, *["-"] * (len(header) - 2), f"{r.status}: {short(r.reason, 60)}"])
            continue
        rows.append([r.name, fmt(r.ms_per_step, 1), fmt(r.tokens_per_s), fmt(r.allocs_per_step),
                     fmt(r.mb_per_step, 1), *[fmt(r.time_split.get(c), 1) for c in cats]])
    return header, rows


def init_rows(study: StudyResult) -> tuple:
    rows = []
    for results in study.init.values():
        for r in results:
            s = r.shape
            rows.append([f"{s['n_layer']}x{s['n_embd']}, vocab {s['vocab_size']}", r.form,
                         with_spread_value(r.ms, r.spread, 1)])
    return ["shape", "init form", "ms to construct"], rows


def scaling_rows(study: StudyResult) -> tuple:
    data = [r for r in study.scaling if r.ok]
    batches = sorted({b for r in data for b in r.tokens_per_s_by_batch})
    header = ["preset", *[f"tokens/s @ batch {b}" for b in batches], "decode ms first pos.",
              "decode ms last pos.", "growth"]
    rows = []
    for r in data:
        by_pos = r.decode_ms_by_position
        first, last = (by_pos[min(by_pos)], by_pos[max(by_pos)]) if by_pos else (None, None)
        rows.append([r.name, *[fmt(r.tokens_per_s_by_batch.get(b)) for b in batches],
                     fmt(first, 3), fmt(last, 3), fmt(last / first if first else None, 2, "x")])
    return header, rows


def compile_rows(study: StudyResult) -> tuple:
    """The compiled presets, then the deployed forms of the "compile" part (a form that failed
    its check or did not run: its status and reason)."""
    rows = [[n, fmt(r.compile_s, 1), fmt(r.graphs_compiled, 0), fmt(r.recompiles, 0),
             fmt(r.tokens_per_s), fmt(r.decode_ms, 3), fmt(r.prefill_ms, 2)]
            for n, r in study.phases.items() if r.ok and r.compile_s is not None]
    for n, r in study.compile.items():
        if r.ok:
            rows.append([n, fmt(r.compile_s, 1), fmt(r.graphs_compiled, 0),
                         fmt(r.recompiles, 0), fmt(r.tokens_per_s), fmt(r.decode_ms, 3),
                         fmt(r.prefill_ms, 2)])
        else:
            rows.append([n, f"{r.status}: {r.reason}", "", "", "", "", ""])
    return ["preset / form", "compile s", "graphs", "recompiles in the timed runs", "tokens/s",
            "decode ms", "prefill ms"], rows


def with_spread_value(value, s, digits=1):
    """with_spread for a figure and its spread dict (timing.spread)."""
    text = fmt(value, digits)
    if value is None or not s or s["runs"] < 2 or not s["median"]:
        return text
    return f"{text} ±{50 * (s['max'] - s['min']) / s['median']:.0f}%{'!' if s['disturbed'] else ''}"


def spread_cell(s: "dict | None", digits=1) -> str:
    """A figure given by its spread dict alone (timing.spread): its median with the ±."""
    return "-" if not s else with_spread_value(s["median"], s, digits)


def machine_lines(study: StudyResult) -> list:
    m, s = study.machine, study.settings
    mm = ", ".join(f"{n}: {g:.1f}" for n, g in sorted(m.mm_gflops.items()))
    llc = f"{m.llc_bytes / 2**20:.0f} MiB" if m.llc_bytes else "unknown"
    return [f"- read bandwidth: {m.bandwidth_weights_gbs:.1f} GB/s over a buffer the size of the weights "
            f"({m.weight_bytes / 1e6:.1f} MB), {m.bandwidth_large_gbs:.1f} GB/s over "
            f"{m.large_bytes / 2**20:.0f} MiB (last-level cache: {llc})",
            f"- torch.mm GFLOPS by size: {mm}; peak {m.mm_peak_gflops:.1f}",
            f"- each limit is the best of {s.get('machine_samples', 1)} interleaved samples"
            + (f"; DISTURBED (samples differ by more than 1.5x): {', '.join(m.disturbed)}"
               if m.disturbed else "; no limit's samples were disturbed"),
            f"- ideal decode step (every weight read once at that bandwidth): {m.ideal_decode_ms:.3f} ms"]


def roofline_rows(study: StudyResult) -> tuple:
    rows, sizes = [], []
    for name, r in study.phases.items():
        if r.ok and r.roofline:
            ro = r.roofline
            sizes = sizes or [k.split("_")[1] for k in ro if k.startswith("gemm_")]
            weight_bytes = ro.get("weight_bytes", study.machine.weight_bytes)
            rows.append([name, fmt(r.decode_ms, 3), fmt(weight_bytes / 1e6, 1),
                         fmt(ro.get("decode_gbs"), 1),
                         f"{100 * ro['decode_fraction_of_roofline']:.1f} %" if "decode_fraction_of_roofline" in ro else "-",
                         *[_gemm_cell(ro.get(f"gemm_{n}_fraction_of_torch_mm"), r.opt) for n in sizes]])
    return ["phase", "decode ms", "weights MB / step", "weights GB/s", "decode / roofline",
            *[f"GEMM {n} / torch.mm (fp32)" for n in sizes]], rows


def _gemm_cell(fraction, opt) -> str:
    """A preset's GEMM rate as a share of fp32 torch.mm's; a lossy format's matmul does other
    arithmetic (int8 dot products, bf16), so its share is marked as not like for like."""
    if fraction is None:
        return "-"
    weights = (opt or {}).get("weights", "fp32")
    return f"{100 * fraction:.0f} %" + ("" if weights == "fp32" else f" ({weights} ops)")


def format_speed_rows(result: QuantizedResult) -> tuple:
    """The weight formats' speed, per thread count (measure/quantized.py)."""
    return (["format", "threads", "what ran", "weights MB / decode step", "tokens/s", "decode ms",
             "x fp32 max"],
            [[r.format, str(r.threads), r.ran, f"{r.decode_weight_bytes / 1e6:.1f}",
              spread_cell(r.tokens_per_s, 1), spread_cell(r.decode_ms, 3), f"{r.x_first:.2f}x"]
             for r in result.speed])


def step_gain_rows(speed: list, preset: str, previous: "str | None") -> tuple:
    """A step's gain (cli/experiment.py): each phase's speed (measure/quantized.measure_speed's
    rows, `reference` first, alternated run by run), "x previous" on `preset`'s row and
    "x reference" on every row (its median tokens/s over the other's)."""
    base = {r.format: r.tokens_per_s["median"] for r in speed}
    header = ["phase", "what ran", "tokens/s", "decode ms", "x previous", "x reference"]
    rows = [[r.format, r.ran, spread_cell(r.tokens_per_s, 1), spread_cell(r.decode_ms, 3),
             fmt(base[r.format] / base[previous] if r.format == preset and previous in base
                 else None, 2, "x"),
             f"{r.x_first:.2f}x"] for r in speed]
    return header, rows


GREEDY_AGREEMENT = "free-running greedy tokens equal"  # a cliff: the table's note says so


def format_quality_rows(quality: dict) -> tuple:
    """The scoreboard, {label: FormatQuality}: each lossy format against fp32 reference,
    teacher-forced over an evaluation set (measure/quality.py); ± is one standard error."""
    nll = lambda v, se: f"{v:+.5f} ± {se:.5f}"
    ppl = lambda v, se: f"{v:.3f} ± {se:.3f}"
    percent = lambda v: f"{100 * v:+.3g}"
    rows = [[label, str(q.positions), ppl(q.ppl_reference, q.ppl_reference_se), ppl(q.ppl, q.ppl_se),
             nll(q.delta_nll, q.delta_nll_se), f"{q.kl_mean:.3g} ± {q.kl_mean_se:.2g}",
             f"{q.kl_median:.3g} / {q.kl_p99:.3g} / {q.kl_max:.3g}", f"{q.same_top_percent:.2f}",
             " / ".join(percent(q.delta_p[k]) for k in ("p1", "p50", "p99"))]
            for label, q in quality.items()]
    return (["format", "positions", "PPL fp32 ± SE", "PPL format ± SE", "delta NLL ± SE (nats)",
             "mean KL ± SE (nats)", "median / p99 / max KL", "same top token %",
             "delta p p1 / p50 / p99 (% points)"], rows)


def format_accuracy_rows(result: QuantizedResult) -> tuple:
    """Each lossy format against fp32 reference."""
    loss = (lambda v: "-" if v is None else f"{v:.4f}")
    first = next(iter(result.accuracy.values()), None)
    prompts = list(result.settings.get("prompts") or (first.greedy_agreement if first else {}))
    rows = []
    for label, a in result.accuracy.items():
        q, agree, first = a.logit_diff_quantiles, a.greedy_agreement, a.first_divergence
        change = a.val_loss_change
        greedy = [cell for p in prompts for cell in (
            f"{100 * agree[p]['50']:.0f}% / {100 * agree[p]['200']:.0f}%",
            f"{first[p]['50']} / {first[p]['200']}")]
        rows.append([label, f"{a.max_abs_logit_diff:.4f}",
                     f"{q['p50']:.4f} / {q['p90']:.4f} / {q['p99']:.4f}", *greedy,
                     loss(a.val_loss_reference), loss(a.val_loss),
                     "-" if change is None else f"{change:+.4f}"])
    return (["format", "max abs logit diff", "p50 / p90 / p99",
             *[h for p in prompts for h in (f"{GREEDY_AGREEMENT}, {p} (50 / 200)",
                                            f"first difference, {p} (50 / 200)")],
             "val loss fp32", "val loss", "change (nats)"], rows)


def top_ops_rows(trace: TraceResult) -> tuple:
    """A trace's ops and labels by self CPU time over its active steps."""
    return (["op", "calls", "Self CPU ms", "CPU total ms", "MFLOPs", "Self CPU MB"],
            [[short(op["name"], 50), str(op["count"]), f"{op['self_cpu_ms']:.3f}",
              f"{op['cpu_total_ms']:.3f}", fmt(op["flops"] / 1e6 if op["flops"] else None, 2),
              fmt(op["self_cpu_memory_bytes"] / 1e6, 3)] for op in trace.top_ops])


def describe_split(time_split: dict) -> str:
    """"linear 40.1%  softmax 3.2% ...": the categories of a time split, the zero ones left out."""
    return "  ".join(f"{k} {v:.1f}%" for k, v in time_split.items() if v >= 0.05)
