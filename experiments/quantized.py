"""Weight formats against fp32 `max`: int8 (`max-int8`), int4 (`max-int4`) and bf16 (custom ops) at the seed and
GPT-2 small shapes, speed at 1 and 2 threads and what each format costs in accuracy
(study/measure/quantized.py, the report's section of the same name).

Every format runs on the same weights, in its own model of one process, alternating run by
run; medians ± half their range (! = runs more than 1.5x apart). The accuracy is measured on
the seed shape's weights against fp32 reference: the scoreboard (teacher-forced over the
validation split, or a fixed random stream with random weights: perplexity, KL divergence, top
token, the correct token's probability), |logit difference|, greedy tokens over 50 and 200 new
tokens (free running: a cliff), and the validation loss (the checkpoint's; with random weights
it means little).

Run: `python experiments/quantized.py [--checkpoint DIR] [--shapes seed gpt2-small]
      [--threads 1 2] [--runs 5] [--new-tokens 50]`
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from smallmind_torch import GPT, ModelConfig
from smallmind_torch.config import GPT2_SMALL
from smallmind_torch.study.measure.quality import VALIDATION_SET, validation_stream
from smallmind_torch.study.measure.quantized import (FORMATS, lossy_formats, measure_speed,
                                                     quality_scoreboard, weight_format_accuracy)
from smallmind_torch.study.report.tables import format_quality_rows, spread_cell, text_table

SHAPES = {"seed": ModelConfig(), "gpt2-small": GPT2_SMALL}


def _model(shape: str, checkpoint):
    if shape == "seed" and checkpoint:
        from smallmind_torch.train.checkpoint import load_checkpoint

        model, _, _ = load_checkpoint(checkpoint)
        return model.eval()
    torch.manual_seed(0)
    return GPT(SHAPES[shape]).eval()


def accuracy(model) -> dict:
    val = validation_stream()  # the seed shape's corpus
    return {label: weight_format_accuracy(model, opt, val_data=val)
            for label, opt in lossy_formats(model, FORMATS).items()}


def print_scoreboard(model, trained: bool, max_windows=None) -> None:
    """The report's scoreboard (quality_scoreboard, format_quality_rows): over the validation
    split for trained weights, a fixed random stream for random ones."""
    quality, e = quality_scoreboard(model, validation_stream() if trained else None,
                                    max_windows=max_windows,
                                    evaluation_set=VALIDATION_SET if trained else None)
    print(f"\nscoreboard against fp32 reference (seed shape), teacher-forced over {e['set']}: "
          f"{e['windows']} windows of {e['block_size']} tokens, {e['positions']} positions; "
          "± one standard error")
    print(text_table(*format_quality_rows(quality)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/seed",
                   help="weights of the seed shape (random weights if it does not exist)")
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=50)
    p.add_argument("--windows", type=int, default=None,
                   help="evaluation windows of the scoreboard (default: the whole validation "
                        "split with a checkpoint, 16 random ones without)")
    args = p.parse_args(argv)
    if args.windows is not None and args.windows < 1:
        p.error(f"--windows must be >= 1, got {args.windows}")
    checkpoint = args.checkpoint if Path(args.checkpoint, "config.json").exists() else None
    print(f"weights: seed {'checkpoint ' + checkpoint if checkpoint else 'random'}, "
          f"gpt2-small random; {args.new_tokens} new tokens after 16, greedy; "
          f"{args.runs} runs, alternating")
    print(f"{'shape':<11} {'threads':>7}  {'format':<18} {'ran':<26} {'MB/step':>8}  "
          f"{'tokens/s':<16} {'decode ms':<16} x fp32")
    for shape in args.shapes:
        model = _model(shape, checkpoint)
        for r in measure_speed(model, FORMATS, args.threads, args.runs, args.new_tokens):
            print(f"{shape:<11} {r.threads:>7}  {r.format:<18} {r.ran:<26} "
                  f"{r.decode_weight_bytes / 1e6:>8.1f}  {spread_cell(r.tokens_per_s, 1):<16} "
                  f"{spread_cell(r.decode_ms, 3):<16} {r.x_first:.2f}x")
        if shape == "seed":
            seed_model = model
    if "seed" in args.shapes:
        print_scoreboard(seed_model, checkpoint is not None, args.windows)
        for label, acc in accuracy(seed_model).items():
            q = acc.logit_diff_quantiles
            print(f"\naccuracy of {label} against fp32 reference (seed shape): max |logit diff| "
                  f"{acc.max_abs_logit_diff:.4f} (p50 {q['p50']:.4f}, p90 {q['p90']:.4f}, "
                  f"p99 {q['p99']:.4f})")
            for prompt, agreement in acc.greedy_agreement.items():
                for n, equal in agreement.items():
                    print(f"  greedy tokens equal over {n} after the {prompt} prompt, free "
                          f"running (a cliff: one near-tie changes every later token): "
                          f"{100 * equal:.1f} % (first difference at token "
                          f"{acc.first_divergence[prompt][n]})")
            if acc.val_loss is not None:
                print(f"  validation loss: fp32 {acc.val_loss_reference:.4f}, {label} "
                      f"{acc.val_loss:.4f} (change {acc.val_loss_change:+.4f} nats)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
