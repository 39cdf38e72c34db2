"""Peers in the same run: smallmind against ONNX Runtime (decode step with past K/V exported
from our model, IO binding), CTranslate2 (converted from the HF model), Hugging Face
transformers `generate`, plain and with a static cache + torch.compile, llama.cpp (a GGUF file
written from our weights: f32, q8_0, q4_0) and torchao (int8 / int4 weight-only, compiled), on
the same weights, each engine in its own process, alternating run by run (docs/study.md; needs
the [peers] extra, and [llamacpp] / [torchao] for those peers).

Run: `python experiments/peers.py [--shapes seed gpt2-small] [--threads 1 2] [--runs 5]
[--engines ...] [--checkpoint DIR] [--json PATH] [--markdown PATH] [--tiny]`
(the same arguments as `smallmind peers`).
"""
import sys

from smallmind_torch.cli import main as smallmind


def main(argv=None) -> int:
    return smallmind(["peers", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
