"""int8 weights against fp32 `max`: speed at the seed and GPT-2 small shapes, and what int8
costs in accuracy (study/quantized.py).

The int8 combinations are two of `max`'s candidates with weights='int8': "fused decode" (the
whole decode step in one decode_step_q8_ call, the prefill on linear_q8) and "custom ops"
(every linear layer and the lm head on the linear_q8 op). Every contender runs on the same
weights, in its own model of one process, alternating run by run; medians ± half their range
(! = runs more than 1.5x apart).

Run: `python experiments/quantized.py [--checkpoint DIR] [--shapes seed gpt2-small]
      [--threads 1 2] [--runs 5] [--new-tokens 50]`
"""
from __future__ import annotations

import argparse
import statistics

import torch

from smallmind_torch import GPT, ModelConfig
from smallmind_torch.config import MAX_CANDIDATES
from smallmind_torch.study.harness import fixed_prompt, measure_generation
from smallmind_torch.study.quantized import weight_format_accuracy
from smallmind_torch.study.results import spread
from smallmind_torch.study.tables import with_spread_value
from smallmind_torch.study.timing import threads as run_threads

INT8 = {f"int8 weights ({label})": MAX_CANDIDATES[label].replace(weights="int8")
        for label in ("fused decode", "custom ops")}
SHAPES = {"seed": ModelConfig(),
          "gpt2-small": ModelConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=50257,
                                    block_size=1024)}


def _models(shape: str, checkpoint):
    if shape == "seed" and checkpoint:
        from smallmind_torch.train.checkpoint import load_checkpoint

        fp32, _, _ = load_checkpoint(checkpoint)
    else:
        torch.manual_seed(0)
        fp32 = GPT(SHAPES[shape])
    fp32.eval().set_phase("max")
    models = {f"fp32 {fp32.phase.description.split(' (')[0]}": fp32}
    for name, opt in INT8.items():
        models[name] = GPT(fp32.config).eval()
        models[name].load_state_dict(fp32.state_dict())
        models[name].set_phase(opt)
    return models


def _figure(values, digits) -> str:
    s = spread(values)  # the study's median with its ± (half range / median) and ! flag
    return with_spread_value(s["median"], s, digits)


def speed(shape, checkpoint, thread_counts, runs, new_tokens) -> list:
    models = _models(shape, checkpoint)
    prompt = fixed_prompt(next(iter(models.values())).config)
    rows = []
    for n in thread_counts:
        with run_threads(n):
            figures = {name: {"tokens_per_s": [], "decode_ms": []} for name in models}
            for name, model in models.items():  # warm-up (and the max measurement)
                measure_generation(model, prompt, new_tokens, 1)
            for _ in range(runs):  # alternating run by run
                for name, model in models.items():
                    _, run = measure_generation(model, prompt, new_tokens, 1, warmup=False)
                    for k in figures[name]:
                        figures[name][k] += run.get(k, [])
        base = statistics.median(figures[next(iter(models))]["tokens_per_s"])
        for name, f in figures.items():
            rows.append((shape, n, name, _figure(f["tokens_per_s"], 1), _figure(f["decode_ms"], 3),
                         f"{statistics.median(f['tokens_per_s']) / base:.2f}x"))
    return rows


def accuracy(checkpoint):
    from smallmind_torch.train.corpus import default_tokens, train_val_split
    from smallmind_torch.train.tokenizer import Tokenizer

    model = next(iter(_models("seed", checkpoint).values()))
    _, val = train_val_split(default_tokens(Tokenizer.default()))
    return weight_format_accuracy(model, INT8["int8 weights (fused decode)"], val_data=val)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/seed",
                   help="weights of the seed shape (random weights if it does not exist)")
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=50)
    args = p.parse_args(argv)
    from pathlib import Path

    checkpoint = args.checkpoint if Path(args.checkpoint, "config.json").exists() else None
    print(f"weights: seed {'checkpoint ' + checkpoint if checkpoint else 'random'}, "
          f"gpt2-small random; {args.new_tokens} new tokens after 16, greedy; "
          f"{args.runs} runs, alternating")
    print(f"{'shape':<11} {'threads':>7}  {'contender':<31} {'tokens/s':<16} {'decode ms':<16} x fp32")
    for shape in args.shapes:
        for row in speed(shape, checkpoint, args.threads, args.runs, args.new_tokens):
            print(f"{row[0]:<11} {row[1]:>7}  {row[2]:<31} {row[3]:<16} {row[4]:<16} {row[5]}")
    if "seed" in args.shapes:
        acc = accuracy(checkpoint)
        q = acc.logit_diff_quantiles
        print(f"\naccuracy of int8 weights against reference (seed shape): max |logit diff| "
              f"{acc.max_abs_logit_diff:.4f} (p50 {q['p50']:.4f}, p90 {q['p90']:.4f}, "
              f"p99 {q['p99']:.4f})")
        for n in acc.greedy_agreement:
            print(f"  greedy tokens equal over {n}: {100 * acc.greedy_agreement[n]:.1f} % "
                  f"(first difference at token {acc.first_divergence[n]})")
        if acc.val_loss is not None:
            print(f"  validation loss: fp32 {acc.val_loss_reference:.4f}, int8 {acc.val_loss:.4f} "
                  f"(change {acc.val_loss_change:+.4f} nats)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
