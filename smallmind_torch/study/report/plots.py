"""The study's pictures, in absolute units (ms, GB/s, GFLOPS, tokens/s), written as PNG files
by `plot_all(study, out_dir)` and shown inline in REPORT.md. Each function draws one figure
and returns its path, or None when the run has no data for it.
"""
from __future__ import annotations

from pathlib import Path

from ...labels import CATEGORIES
from ..results import StudyResult
from ..seed import SEED

FILES = {"tokens_per_s": "tokens_per_s.png", "decode_split": "decode_split.png",
         "waterfall": "waterfall.png", "roofline": "roofline.png",
         "positions": "decode_by_position.png", "batches": "tokens_by_batch.png",
         "memory": "memory_per_token.png", "engines": "engines.png"}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log(ax, axis: str = "x", base: int = 10) -> None:
    """A log axis labelled with plain numbers on its major ticks only (no crowded minor ones)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    getattr(ax, f"set_{axis}scale")("log", base=base)
    target = getattr(ax, f"{axis}axis")
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def save_figure(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return str(path)


def tokens_per_s(study: StudyResult, path: Path):
    """Tokens/s per preset with min-max whiskers, the seed's baseline and target, the peers."""
    plt = pyplot()
    ok = {n: r for n, r in study.phases.items() if r.ok}
    peers = {n: p for n, p in study.peers.items() if p.ok and p.tokens_per_s}
    rows = [("seed baseline (C#)", SEED["baseline"]["tokens_per_s"], None, "#999999"),
            ("seed final target", sum(SEED["final_target"]["tokens_per_s"]) / 2, None, "#cccccc"),
            *[(n, r.tokens_per_s, r.spread.get("tokens_per_s"), "#1f77b4") for n, r in ok.items()],
            *[(f"{n} (peer)", p.tokens_per_s["median"], p.tokens_per_s, "#ff7f0e")
              for n, p in peers.items()]]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    for i, (name, value, s, color) in enumerate(rows):
        err = None if not s else [[value - s["min"]], [s["max"] - value]]
        ax.barh(i, value, xerr=err, color=color, capsize=3)
        ax.text(s["max"] if s else value, i, f"  {value:,.0f}", va="center", fontsize=8)  # past the whisker
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    _log(ax)
    ax.set_xlabel("tokens / s, greedy, prefill included (log scale; whiskers: min-max of the runs)")
    ax.set_title("Generation speed")
    return save_figure(fig, path)


def decode_split(study: StudyResult, path: Path):
    """Absolute ms per generated token, stacked by profiler category, per preset; the slow
    presets and the fast ones on separate axes so that neither hides the other."""
    plt = pyplot()
    n_tokens = study.settings["new_tokens"]
    rows = {n: {c: r.time_split_ms.get(c, 0.0) / n_tokens for c in CATEGORIES}
            for n, r in study.phases.items() if r.ok and r.time_split_ms}
    if not rows:
        return None
    totals = {n: sum(v.values()) for n, v in rows.items()}
    cut = 5.0  # ms per token: the presets without a KV cache are far above it
    groups = [g for g in ([n for n in rows if totals[n] > cut], [n for n in rows if totals[n] <= cut]) if g]
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 0.5 * len(rows) + 2), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, names in zip(axes[0], groups):
        left = [0.0] * len(names)
        for i, cat in enumerate(CATEGORIES):
            vals = [rows[n][cat] for n in names]
            ax.barh(names, vals, left=left, color=cmap(i % 10), label=cat)
            left = [a + b for a, b in zip(left, vals)]
        for j, n in enumerate(names):
            ax.text(left[j], j, f" {totals[n]:.2f} ms", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("ms per generated token under the profiler (prefill included)")
    axes[0][-1].legend(loc="lower right", fontsize=7)
    fig.suptitle("Where a token's time goes (profiler labels; 'other' = Python, dispatch, "
                 "everything unlabelled)", fontsize=10)
    return save_figure(fig, path)


def waterfall(study: StudyResult, path: Path):
    """What each switch bought: ms per token from phase0 to max, one bar per step spanning
    the previous step's time to this one's (log scale), with the factor."""
    plt = pyplot()
    rows = [r for r in study.waterfall if r.ms_per_token]
    if len(rows) < 2:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    previous = rows[0].ms_per_token
    for i, r in enumerate(rows):
        ms = r.ms_per_token
        lo, hi = (ms, previous) if i else (ms, ms * 1.02)
        color = "#999999" if i == 0 else ("#2ca02c" if ms <= previous else "#d62728")
        ax.barh(i, hi - lo, left=lo, color=color)
        note = f"{ms:.3g} ms" if i == 0 else f"{ms:.3g} ms ({previous / ms:.2f}x)"
        ax.text(max(hi, ms), i, "  " + note, va="center", fontsize=8)
        previous = ms
    ax.set_yticks(range(len(rows)), [r.label for r in rows])
    ax.invert_yaxis()
    _log(ax)
    ax.set_xlabel("ms per generated token (log scale; green: faster than the step above)")
    ax.set_title("What each switch bought, phase0 to max")
    return save_figure(fig, path)


def roofline(study: StudyResult, path: Path):
    """Left: the decode step's achieved read bandwidth of the weights per preset against the
    measured bandwidth. Right: GEMM GFLOPS by size of each preset's matmul against torch.mm."""
    plt = pyplot()
    m = study.machine
    ok = {n: r for n, r in study.phases.items() if r.ok and r.roofline.get("decode_gbs")}
    if m is None or not ok:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    names = list(ok)
    left.barh(names, [ok[n].roofline["decode_gbs"] for n in names], color="#1f77b4")
    left.axvline(m.bandwidth_weights_gbs, color="#d62728", ls="--",
                 label=f"read bandwidth, weights-sized buffer ({m.bandwidth_weights_gbs:.1f} GB/s)")
    left.axvline(m.bandwidth_large_gbs, color="#ff7f0e", ls=":",
                 label=f"read bandwidth, beyond the caches ({m.bandwidth_large_gbs:.1f} GB/s)")
    _log(left)
    left.set_xlabel("GB/s of weights read per decode step (log)")
    left.invert_yaxis()
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    left.set_title("Decode step vs the bandwidth roofline")
    sizes = sorted(m.mm_gflops)
    right.plot(sizes, [m.mm_gflops[n] for n in sizes], "k--", marker="o", label="torch.mm, fp32 (machine)")
    for n, r in ok.items():
        if r.gflops:
            xs = sorted(r.gflops)
            weights = (r.opt or {}).get("weights", "fp32")
            # a lossy format's matmul does other arithmetic (int8 dot products): dotted, named
            right.plot(xs, [r.gflops[x] for x in xs], marker=".",
                       ls="-" if weights == "fp32" else ":",
                       label=n if weights == "fp32" else f"{n} ({weights} weights: not fp32 work)")
    _log(right, base=2)
    right.set_xlabel("square matrix size N")
    right.set_ylabel("GFLOPS (int8 formats: integer ops/s)")
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    right.set_title("GEMM vs torch.mm")
    return save_figure(fig, path)


def _scaling_lines(study: StudyResult, path: Path, curve: str, title: str, xlabel: str,
                   ylabel: str, x_base: "int | None"):
    """One line per preset of a scaling curve (`curve`: a ScalingResult's x -> y dict)."""
    plt = pyplot()
    rows = [r for r in study.scaling if r.ok]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    for r in rows:
        points = sorted(getattr(r, curve).items())
        ax.plot([x for x, _ in points], [y for _, y in points], marker=".", label=r.name)
    if x_base:
        _log(ax, base=x_base)
    _log(ax, "y")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return save_figure(fig, path)


def positions(study: StudyResult, path: Path):
    """Decode ms against position: the no-cache lines grow, the KV-cache lines stay flat."""
    return _scaling_lines(study, path, "decode_ms_by_position", "Decode step by position",
                          "position of the new token", "ms per decode step (log)", None)


def batches(study: StudyResult, path: Path):
    """Total tokens/s against batch size per preset."""
    return _scaling_lines(study, path, "tokens_per_s_by_batch", "Throughput by batch size",
                          "batch size (sequences generated together)", "total tokens / s (log)", 2)


def memory(study: StudyResult, path: Path):
    """Allocations per generated token (count), per preset and peer, against the seed's."""
    plt = pyplot()
    rows = [(n, r.allocs_per_token) for n, r in study.phases.items() if r.ok and r.allocs_per_token is not None]
    rows += [(f"{n} (peer)", p.allocs_per_token) for n, p in study.peers.items()
             if p.ok and p.allocs_per_token is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    ax.barh([r[0] for r in rows], [max(r[1], 0.1) for r in rows], color="#2ca02c")
    for i, (_, v) in enumerate(rows):
        ax.text(max(v, 0.1), i, f"  {v:,.1f}", va="center", fontsize=8)
    _log(ax)
    ax.invert_yaxis()
    ax.set_xlabel("allocations per generated token (log; the seed counted 9 GC gen-0 collections per token)")
    ax.set_title("Allocations per token")
    return save_figure(fig, path)


def engines(study: StudyResult, path: Path):
    """Our max beside the peer engines, tokens/s per case and thread count (whiskers: min-max)."""
    plt = pyplot()
    cases = study.engines.cases if study.engines else []
    panels = [(c, t) for c in cases for t in sorted({r.threads for r in c.rows})]
    if not panels:
        return None
    per_row = 2 if len(panels) == 4 else min(3, len(panels))  # a grid that reads on a page
    n_rows = -(-len(panels) // per_row)
    fig, axes = plt.subplots(n_rows, per_row, figsize=(4.2 * per_row, 3.6 * n_rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (case, threads) in zip(axes.flat, panels):
        rows = [r for r in case.rows if r.threads == threads and r.ok and r.tokens_per_s]
        names = [r.engine for r in rows]
        med = [r.tokens_per_s["median"] for r in rows]
        err = [[m - r.tokens_per_s["min"] for m, r in zip(med, rows)],
               [r.tokens_per_s["max"] - m for m, r in zip(med, rows)]]
        colors = ["#1f77b4" if n.startswith("smallmind") else "#ff7f0e" for n in names]
        ax.bar(range(len(rows)), med, yerr=err, color=colors, capsize=3)
        ax.set_ylim(0, 1.08 * max((r.tokens_per_s["max"] for r in rows), default=1))
        ax.set_xticks(range(len(rows)), names, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{case.shape}, prompt {case.prompt_len}, {threads} thread(s)", fontsize=8)
        ax.set_ylabel("tokens / s")
    fig.suptitle("smallmind (blue) and the peer engines (orange) on the same weights", fontsize=10)
    return save_figure(fig, path)


def plot_all(study: StudyResult, out_dir: "str | Path") -> dict:
    """Write every plot the run has data for; {kind: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawers = {"tokens_per_s": tokens_per_s, "decode_split": decode_split, "waterfall": waterfall,
               "roofline": roofline, "positions": positions, "batches": batches, "memory": memory,
               "engines": engines}
    paths = {kind: draw(study, out_dir / FILES[kind]) for kind, draw in drawers.items()}
    return {kind: p for kind, p in paths.items() if p}
