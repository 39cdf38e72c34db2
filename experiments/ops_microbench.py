"""Micro-benchmark of the smallmind custom ops against ATen, at the seed model's shapes.

Seed model: n_embd=256, n_head=8 (head_dim 32), T=block_size=128, vocab 512, MLP 1024.
For every op: our time, ATen's time on the same inputs, the speed-up (ATen time / our
time, > 1 means ours is faster), GFLOPS for the GEMMs (against torch.mm's peak measured in
the same run) and achieved GB/s for the memory-bound ops (against the machine's measured
read bandwidth, same run). All timing goes through `smallmind_torch.study.protocol.timing.median_time`;
each pair is timed in alternating rounds and the best median is kept, which damps the
noise of a shared machine.

Sections (--only): `gemm`, square GEMMs 128..1024 and the model's linear layers
x (T, C) @ W^T (W (N, C), T = 16..1024, C = 256 and 768, the weight packed once and reused as
the no-grad `linear` does); `ops`, softmax, LayerNorm, attention, embedding and the decode
projections (M = 1); `decode`, the whole-model decode step (`decode_step_`) of the seed shape
against its plain-PyTorch reference, in GB/s of weights read per step against the read
bandwidth over a weights-sized buffer (the step's roofline); `q8`, the weight-only int8
linear at M = 1 (seed and GPT-2 small layers) against float32 F.linear on the float weight. Every section runs once per ISA
given (--isa; default every ISA this CPU supports, see smallmind_torch.ops.set_isa): torch.mm
is the same in each, our kernels are the AVX-512, AVX2 or plain C++ ones.

    python experiments/ops_microbench.py [--threads N] [--isa avx512 avx2] [--only gemm]
                                         [--rounds 5] [--quick] [--json rows.json]

An op the build does not provide prints "not available" instead of failing the run.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from smallmind_torch.machine_load import memory_bandwidth_gbs
from smallmind_torch.study.protocol.machine import mm_gflops
from smallmind_torch.study.protocol.timing import median_time
from smallmind_torch.threads import threads

# seed shapes
C, NH, HS, T, V, HIDDEN = 256, 8, 32, 128, 512, 1024


def _best_median(fn: Callable[[], object], rounds: int, budget_s: float) -> float:
    t0 = median_time(fn, warmup=1, repeat=1)
    repeat = int(min(25, max(5, budget_s / max(t0, 1e-7))))
    return median_time(fn, warmup=2, repeat=repeat)


def time_pair(ours: Optional[Callable], aten: Callable, rounds: int, budget_s: float):
    """Best-of-`rounds` medians, ours and ATen alternating."""
    t_ours, t_aten = math.inf, math.inf
    for _ in range(rounds):
        if ours is not None:
            t_ours = min(t_ours, _best_median(ours, rounds, budget_s))
        t_aten = min(t_aten, _best_median(aten, rounds, budget_s))
    return (t_ours if ours is not None else None), t_aten


def _ops_module():
    try:
        import smallmind_torch.ops as ops

        ops.load_all()  # builds the extension on first use
        return ops, None
    except Exception as exc:  # CustomOpsUnavailable
        return None, f"{type(exc).__name__}: {exc}"


def _get(ops, name: str):
    """The op function `name` (the package's lazy export), or None when it is not available."""
    if ops is None:
        return None
    try:
        fn = getattr(ops, name)
    except Exception:  # AttributeError, CustomOpsUnavailable
        return None
    return fn if callable(fn) else None


GEMM_SQUARE = (128, 256, 512, 1024)
LINEAR_T = (16, 64, 256, 1024)
LINEAR_C = (256, 768)


def gemm_cases(ops, quick: bool = False):
    """Square GEMMs and the model's linear layers (no grad: the weight packed once, reused)."""
    cases = []
    g = torch.Generator().manual_seed(0)
    gemm = _get(ops, "gemm")
    linear = _get(ops, "linear")
    for n in GEMM_SQUARE[:3] if quick else GEMM_SQUARE:
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        out = torch.empty(n, n)
        cases.append(("gemm", f"{n}x{n}x{n}", "flops",
                      (lambda a=a, b=b, o=out: gemm(a, b, out=o)) if gemm else None,
                      lambda a=a, b=b, o=out: torch.mm(a, b, out=o), 2 * n ** 3, None))
    for c in LINEAR_C[:1] if quick else LINEAR_C:
        for k, n, what in ((c, 3 * c, "qkv"), (c, c, "attn proj"), (c, 4 * c, "fc"),
                           (4 * c, c, "mlp proj")):
            w, bias = torch.randn(n, k, generator=g) * k ** -0.5, torch.randn(n, generator=g)
            for t in LINEAR_T[1:3] if quick else LINEAR_T:
                x, out = torch.randn(t, k, generator=g), torch.empty(t, n)
                cases.append(("linear", f"{t}x{k}x{n} ({what})", "flops",
                              (lambda x=x, w=w, bb=bias, o=out: linear(x, w, bb, out=o))
                              if linear else None,
                              lambda x=x, w=w, bb=bias, o=out: torch.addmm(bb, x, w.t(), out=o),
                              2 * t * k * n, None))
    return cases


def op_cases(ops):
    """(op, shape label, kind, ours_fn or None, aten_fn, flops, bytes) tuples."""
    cases = []
    g = torch.Generator().manual_seed(0)
    linear = _get(ops, "linear")
    # decode projections (M = 1): qkv, MLP up, attn/MLP down, lm head
    for k, n, what in ((C, 3 * C, "qkv"), (C, HIDDEN, "fc"), (C, C, "proj"), (C, V, "lm_head"),
                       (HIDDEN, C, "mlp_proj")):
        x, w, bias = torch.randn(1, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n)
        out = torch.empty(1, n)
        cases.append(("linear", f"1x{k}x{n} ({what}, decode)", "flops",
                      (lambda x=x, w=w, bb=bias, o=out: linear(x, w, bb, out=o)) if linear else None,
                      lambda x=x, w=w, bb=bias, o=out: torch.addmm(bb, x, w.t(), out=o),
                      2 * k * n, None))

    # causal softmax over (1, nh, T, T) scores: ATen = mask + F.softmax
    sm = _get(ops, "causal_softmax")
    scores = torch.randn(1, NH, T, T, generator=g)
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    cases.append(("causal_softmax", f"1x{NH}x{T}x{T}", "bytes",
                  (lambda: sm(scores)) if sm else None,
                  lambda: F.softmax(scores.masked_fill(mask, float("-inf")), dim=-1),
                  None, 2 * scores.numel() * 4))

    # layer norm, prefill and decode rows
    ln = _get(ops, "layer_norm")
    w_ln, b_ln = torch.randn(C, generator=g), torch.randn(C, generator=g)
    for rows in (T, 1):
        x = torch.randn(1, rows, C, generator=g)
        cases.append(("layer_norm", f"1x{rows}x{C}", "bytes",
                      (lambda x=x: ln(x, w_ln, b_ln)) if ln else None,
                      lambda x=x: F.layer_norm(x, (C,), w_ln, b_ln),
                      None, 2 * x.numel() * 4 + 2 * C * 4))

    # attention: prefill (causal) and decode (one query against the full cache)
    att = _get(ops, "attention")
    q = torch.randn(1, NH, T, HS, generator=g)
    k = torch.randn(1, NH, T, HS, generator=g)
    v = torch.randn(1, NH, T, HS, generator=g)
    flops = 2 * 2 * NH * HS * T * (T + 1) / 2
    cases.append(("attention", f"prefill 1x{NH}x{T}x{HS}", "flops",
                  (lambda: att(q, k, v)) if att else None,
                  lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                  flops, None))
    q1 = q[:, :, -1:].contiguous()
    cases.append(("attention", f"decode 1x{NH}x1x{HS} vs Tk={T}", "bytes",
                  (lambda: att(q1, k, v, q_offset=T - 1)) if att else None,
                  lambda: F.scaled_dot_product_attention(q1, k, v),
                  None, (k.numel() + v.numel() + 2 * q1.numel()) * 4))

    # embedding backward: the training batch (B=8, T) over the seed vocabulary
    eb = _get(ops, "embedding_backward")
    idx = torch.randint(0, V, (8, T), generator=g)
    grad = torch.randn(8, T, C, generator=g)
    flat_idx, flat_grad = idx.flatten(), grad.reshape(-1, C)
    cases.append(("embedding_backward", f"idx 8x{T}, V={V}, D={C}", "bytes",
                  (lambda: eb(grad, idx, V)) if eb else None,
                  lambda: torch.zeros(V, C).index_add_(0, flat_idx, flat_grad),
                  None, grad.numel() * 4 + V * C * 4 + idx.numel() * 8))
    emb = _get(ops, "embedding")
    wte = torch.randn(V, C, generator=g)
    cases.append(("embedding", f"idx 8x{T}, V={V}, D={C}", "bytes",
                  (lambda: emb(idx, wte)) if emb else None,
                  lambda: F.embedding(idx, wte),
                  None, 2 * idx.numel() * C * 4 + idx.numel() * 8))
    return cases


def decode_cases(ops):
    """The seed model's whole decode step (B = 1, position 64 of 128): our op against the same
    step in plain PyTorch (fused_decode.decode_step_reference); bytes = the weights it reads."""
    step = _get(ops, "decode_step_")
    from smallmind_torch.fused_decode import decode_step_reference

    g = torch.Generator().manual_seed(0)
    n_layer, S = 4, 128
    params = []
    for _ in range(n_layer):
        for shape in ((C,), (C,), (3 * C, C), (3 * C,), (C, C), (C,), (C,), (C,), (HIDDEN, C),
                      (HIDDEN,), (C, HIDDEN), (C,)):
            params.append(torch.randn(*shape, generator=g) * 0.05)
    wte, wpe = torch.randn(V, C, generator=g), torch.randn(S, C, generator=g)
    ln_w, ln_b = torch.ones(C), torch.zeros(C)
    caches = [torch.randn(1, NH, S, HS, generator=g) for _ in range(2 * n_layer)]
    tokens, logits = torch.tensor([7]), torch.empty(1, V)
    next_tokens = torch.empty(1, dtype=torch.long)
    args = (tokens, 64, wte, wpe, params, ln_w, ln_b, caches[:n_layer], caches[n_layer:], NH,
            1e-5, logits, next_tokens)
    nbytes = 4 * (sum(p.numel() for p in params) + 2 * C + V * C + C)
    return [("decode_step_", f"seed: {n_layer}x{C}, vocab {V}, pos 64", "bytes",
             (lambda: step(*args)) if step else None, lambda: decode_step_reference(*args),
             None, nbytes)]


def q8_cases(ops):
    """The linear ops on low-precision weights at decode (M = 1), seed and GPT-2 small layers,
    against float32 F.linear on the float weight they were made from: `linear_q8` (int8
    weights), `linear_w8a8` (int8 activations too: VNNI where present) and `linear_bf16`;
    bytes = what the op's weight (and scales) take (a float32 weight is 4 bytes a weight)."""
    from smallmind_torch.weight_formats import quantize_per_channel, to_bf16

    kernels = {name: _get(ops, name) for name in ("linear_q8", "linear_w8a8", "linear_bf16")}
    cases = []
    g = torch.Generator().manual_seed(0)
    for c, vocab, label in ((C, V, "seed"), (768, 50257, "gpt2-small")):
        for k, n, what in ((c, 3 * c, "qkv"), (c, 4 * c, "fc"), (4 * c, c, "mlp proj"),
                           (c, vocab, "lm head")):
            w, bias, x = torch.randn(n, k, generator=g), torch.randn(n, generator=g), \
                torch.randn(1, k, generator=g)
            args = {"linear_q8": quantize_per_channel(w), "linear_w8a8": quantize_per_channel(w),
                    "linear_bf16": (to_bf16(w),)}
            nbytes = {"linear_q8": n * k + 4 * n, "linear_w8a8": n * k + 4 * n,
                      "linear_bf16": 2 * n * k}
            for name, fn in kernels.items():
                cases.append((name, f"{label} 1x{k}x{n} ({what}) vs fp32", "bytes",
                              (lambda x=x, a=args[name], b=bias, fn=fn: fn(x, *a, b)) if fn else None,
                              lambda x=x, w=w, b=bias: F.linear(x, w, b), None, nbytes[name]))
    return cases


SECTIONS = ("gemm", "ops", "decode", "q8")


def run(quick: bool = False, isas=None, only=SECTIONS, rounds=None):
    ops, why = _ops_module()
    default_rounds, budget = (2, 0.02) if quick else (5, 0.05)
    rounds = rounds or default_rounds
    supported = ops.supported_isas() if ops is not None else []
    isas = [i for i in (isas or supported) if i in supported] or [None]
    decode_bytes = None
    rows = []
    with torch.no_grad():
        cases = []
        if "gemm" in only:
            cases += gemm_cases(ops, quick)
        if "ops" in only:
            cases += op_cases(ops)
        if "decode" in only:
            cases += decode_cases(ops)
            decode_bytes = cases[-1][-1]
        if "q8" in only:
            cases += q8_cases(ops)
        bw = memory_bandwidth_gbs()
        bw_weights = memory_bandwidth_gbs(decode_bytes, repeat=15) if decode_bytes else None
        peak = mm_gflops(512)
        for isa in isas:
            for op, shape, kind, ours, aten, flops, nbytes in cases:
                if isa is not None:
                    ops.set_isa(isa)
                t_ours, t_aten = time_pair(ours, aten, rounds, budget)
                row = {"op": op, "isa": isa, "shape": shape,
                       "ours_us": None if t_ours is None else t_ours * 1e6,
                       "aten_us": t_aten * 1e6,
                       "speedup": None if t_ours is None else t_aten / t_ours}
                if kind == "flops":
                    row["ours_gflops"] = None if t_ours is None else flops / t_ours / 1e9
                    row["aten_gflops"] = flops / t_aten / 1e9
                    row["ours_pct_mm_peak"] = (None if t_ours is None else
                                               100 * row["ours_gflops"] / peak)
                else:
                    ref = bw_weights if op == "decode_step_" else bw
                    row["ours_gbs"] = None if t_ours is None else nbytes / t_ours / 1e9
                    row["aten_gbs"] = nbytes / t_aten / 1e9
                    row["ours_pct_bw"] = None if t_ours is None else 100 * row["ours_gbs"] / ref
                rows.append(row)
        if ops is not None and supported:
            ops.set_isa(supported[0])
    env = {"threads": torch.get_num_threads(), "torch": torch.__version__,
           "mem_bw_gbs": bw, "mem_bw_weights_gbs": bw_weights, "mm512_gflops": peak,
           "ops_error": why, "isas": [i for i in isas if i]}
    env["gemm_kernel"] = ops.kernel_name() if ops is not None else None
    return env, rows


def format_table(env, rows) -> str:
    lines = [f"threads={env['threads']}  torch {env['torch']}  ISAs {', '.join(env['isas']) or '-'}"
             f"  measured: read bandwidth {env['mem_bw_gbs']:.1f} GB/s"
             + (f" ({env['mem_bw_weights_gbs']:.1f} over the decode step's weights)"
                if env.get("mem_bw_weights_gbs") else "")
             + f", torch.mm 512^3 {env['mm512_gflops']:.1f} GFLOPS"]
    if env.get("ops_error"):
        lines.append(f"custom ops: {env['ops_error']}")
    head = (f"{'op':<18} {'isa':<7} {'shape':<32} {'ours us':>9} {'aten us':>9} {'aten/ours':>9} "
            f"{'ours':>14} {'aten':>14} {'ours % ref':>10}")
    lines += [head, "-" * len(head)]
    for r in rows:
        first = f"{r['op']:<18} {r['isa'] or '-':<7} {r['shape']:<32}"
        if r["ours_us"] is None:
            lines.append(f"{first} {'not available':>9} {r['aten_us']:9.1f}")
            continue
        if "ours_gflops" in r:
            a, b, pct = (f"{r['ours_gflops']:.2f} GFLOPS", f"{r['aten_gflops']:.2f} GFLOPS",
                         f"{r['ours_pct_mm_peak']:.0f}% mm")
        else:
            a, b, pct = (f"{r['ours_gbs']:.2f} GB/s", f"{r['aten_gbs']:.2f} GB/s",
                         f"{r['ours_pct_bw']:.0f}% bw")
        lines.append(f"{first} {r['ours_us']:9.1f} {r['aten_us']:9.1f} {r['speedup']:9.2f} "
                     f"{a:>14} {b:>14} {pct:>10}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads first")
    p.add_argument("--isa", nargs="+", default=None,
                   help="ISAs to run our kernels on (default: every one this CPU supports)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                   help="sections to run (default: all)")
    p.add_argument("--quick", action="store_true", help="fewer shapes, shorter timing rounds")
    p.add_argument("--rounds", type=int, default=None,
                   help="alternating timing rounds per pair, the best median kept (default 5; "
                        "more on a busy machine)")
    p.add_argument("--json", metavar="PATH", help="also write {env, rows} as JSON here")
    args = p.parse_args(argv)
    with threads(args.threads):
        env, rows = run(args.quick, args.isa, tuple(args.only), args.rounds)
    print(format_table(env, rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
