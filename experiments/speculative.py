"""Speculative decoding against fp32 `max`'s plain greedy decoding (study/measure/speculative.py,
the report's section of the same name): every draft of DRAFTS at k = 1, 2, 4, 6 on the seed
checkpoint, the wide checkpoint (6 x 512) and GPT-2 small (random weights); one table per
shape and the break-even sentence; `--json` writes the SpeculativeResult.

Run: `python experiments/speculative.py [--shapes seed wide gpt2-small] [--runs 5]
      [--new-tokens 50] [--threads 2] [--json speculative.json]`
"""
from __future__ import annotations

import argparse
import json

import torch

from smallmind_torch import GPT
from smallmind_torch.study.measure.speculative import K_VALUES, measure_speculative
from smallmind_torch.study.protocol.settings import fixed_prompt
from smallmind_torch.study.report.speculative_tables import markdown
from smallmind_torch.study.results import SpeculativeResult
from smallmind_torch.config import GPT2_SMALL
from smallmind_torch.study.run import WIDE_CHECKPOINT
from smallmind_torch.threads import threads

CHECKPOINTS = {"seed": "checkpoints/seed", "wide": WIDE_CHECKPOINT}
PROMPT = "The for statement"  # the README's and make study's prompt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["seed", "wide", "gpt2-small"],
                   choices=["seed", "wide", "gpt2-small"])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=50)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    shapes = []
    with threads(args.threads):
        for shape in args.shapes:
            if shape == "gpt2-small":
                torch.manual_seed(0)
                model, ids, text, weights = (GPT(GPT2_SMALL).eval(), fixed_prompt(GPT2_SMALL),
                                             "16 random token ids (seed 1234)", "random")
            else:
                from smallmind_torch.train.checkpoint import load_checkpoint

                model, tok, _ = load_checkpoint(CHECKPOINTS[shape])
                ids = torch.tensor([tok.encode(PROMPT)])
                text, weights = f"{PROMPT!r}", f"checkpoint {CHECKPOINTS[shape]}"
            shapes.append(measure_speculative(model, ids, label=shape, weights=weights,
                                              prompt_text=text, new_tokens=args.new_tokens,
                                              runs=args.runs, k_values=K_VALUES))
            print(markdown(SpeculativeResult(shapes[-1:], {})), flush=True)
    result = SpeculativeResult(shapes, {"runs": args.runs, "k_values": list(K_VALUES),
                                        "new_tokens": args.new_tokens})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.to_dict(), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
