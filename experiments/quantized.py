"""Weight formats against fp32 `max`: int8 (`max-int8`) and bf16 (custom ops) at the seed and
GPT-2 small shapes, speed at 1 and 2 threads and what each format costs in accuracy
(study/measure/quantized.py, the report's section of the same name).

Every format runs on the same weights, in its own model of one process, alternating run by
run; medians ± half their range (! = runs more than 1.5x apart). The accuracy is measured on
the seed shape's weights against fp32 reference: |logit difference|, greedy tokens over 50 and
200 new tokens, and the validation loss (the checkpoint's; with random weights it means little).

Run: `python experiments/quantized.py [--checkpoint DIR] [--shapes seed gpt2-small]
      [--threads 1 2] [--runs 5] [--new-tokens 50]`
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from smallmind_torch import GPT, ModelConfig
from smallmind_torch.study.measure.quantized import FORMATS, measure_speed, weight_format_accuracy
from smallmind_torch.study.report.tables import spread_cell

SHAPES = {"seed": ModelConfig(),
          "gpt2-small": ModelConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=50257,
                                    block_size=1024)}


def _model(shape: str, checkpoint):
    if shape == "seed" and checkpoint:
        from smallmind_torch.train.checkpoint import load_checkpoint

        model, _, _ = load_checkpoint(checkpoint)
        return model.eval()
    torch.manual_seed(0)
    return GPT(SHAPES[shape]).eval()


def accuracy(model) -> dict:
    from smallmind_torch.train.corpus import default_tokens, train_val_split
    from smallmind_torch.train.tokenizer import Tokenizer

    _, val = train_val_split(default_tokens(Tokenizer.default()))  # the seed shape's corpus
    out = {}
    for label, phase in FORMATS.items():
        with model.using(phase):
            opt = model.phase.opt  # what ran: for max-int8, its candidate
        if opt.weights != "fp32":
            out[label] = weight_format_accuracy(model, opt, val_data=val)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/seed",
                   help="weights of the seed shape (random weights if it does not exist)")
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=50)
    args = p.parse_args(argv)
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
        for label, acc in accuracy(seed_model).items():
            q = acc.logit_diff_quantiles
            print(f"\naccuracy of {label} against fp32 reference (seed shape): max |logit diff| "
                  f"{acc.max_abs_logit_diff:.4f} (p50 {q['p50']:.4f}, p90 {q['p90']:.4f}, "
                  f"p99 {q['p99']:.4f})")
            for prompt, agreement in acc.greedy_agreement.items():
                for n, equal in agreement.items():
                    print(f"  greedy tokens equal over {n} after the {prompt} prompt: "
                          f"{100 * equal:.1f} % (first difference at token "
                          f"{acc.first_divergence[prompt][n]})")
            if acc.val_loss is not None:
                print(f"  validation loss: fp32 {acc.val_loss_reference:.4f}, {label} "
                      f"{acc.val_loss:.4f} (change {acc.val_loss_change:+.4f} nats)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
