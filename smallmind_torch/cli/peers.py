"""`smallmind peers`: smallmind against ONNX Runtime, CTranslate2, Hugging Face transformers,
llama.cpp and torchao on the same weights, each engine in its own process, alternating run by
run (docs/study.md; study/peers/); the int8 and int4 engines (smallmind:max-int8,
onnxruntime-int8, ctranslate2-int8, llama.cpp-q8_0, llama.cpp-q4_0, torchao-int8,
torchao-int4) beside the fp32 ones, their agreement with fp32 reference's tokens measured.
Needs the [peers] extra (llama.cpp: [llamacpp], torchao: [torchao]); a peer whose packages are
missing is "not installed".
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from ..config import GPT2_SMALL
from .core import (PROMPT_TEXT, SHAPE_FIELDS, TINY_SHAPE, Command, UsageError, add_shape_arguments,
                   check_presets, check_writable, load_checkpoint_or_fail, model_config_from_args,
                   random_model, register)

SHAPES = {"seed": {}, "gpt2-small": dataclasses.asdict(GPT2_SMALL), "tiny": TINY_SHAPE, "custom": None}
TINY_DEFAULTS = dict(runs=1, new_tokens=6, prompt_len=4, threads=[1], long_prompt=0)
DEFAULTS = dict(runs=5, new_tokens=50, prompt_len=16, threads=[1, 2], long_prompt=512)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engines", nargs="+", default=None, metavar="ENGINE",
                   help="smallmind (the --phase preset), smallmind:PRESET (e.g. "
                        "smallmind:max-int8), onnxruntime, onnxruntime-int8, ctranslate2, "
                        "ctranslate2-int8, hf, hf-compiled, llama.cpp, llama.cpp-q8_0, "
                        "llama.cpp-q4_0, torchao-int8, torchao-int4 (default: smallmind, "
                        "smallmind:max-int8 and every peer)")
    p.add_argument("--shapes", nargs="+", default=None, metavar="SHAPE",
                   help="seed, gpt2-small, tiny, custom (the seed shape changed by the shape "
                        "arguments below) (default: seed gpt2-small)")
    p.add_argument("--threads", nargs="+", type=int, default=None, metavar="N",
                   help="intra-op thread counts, each measured in its own round (default: 1 2)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per engine (5)")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens per generation (50)")
    p.add_argument("--prompt-len", type=int, default=None, help="fixed prompt length (16)")
    p.add_argument("--long-prompt", type=int, default=None, metavar="N",
                   help="also a case with an N-token prompt, for shapes whose context holds it "
                        "(default 512: GPT-2 small; 0: none)")
    p.add_argument("--phase", default="max", help="preset of the `smallmind` engine (max)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of hf-compiled and the torchao engines "
                        "(inductor)")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint directory for the seed shape (smallmind train); default: "
                        "random weights from --seed")
    p.add_argument("--seed", type=int, default=1234, help="seed of random weights and prompts")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    p.add_argument("--markdown", default=None, metavar="PATH", help="write the Markdown tables")
    p.add_argument("--tiny", action="store_true",
                   help="tiny shape, 1 run, 6 tokens, 1 thread: seconds (tests, smoke runs)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_shape_arguments(p, "the `custom` shape (default: the seed shape)")


def _options(args) -> dict:
    base = TINY_DEFAULTS if args.tiny else DEFAULTS
    opts = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    return opts  # each given value is in range (cli.core.check_numbers)


def _shapes(args) -> list:
    if args.tiny and args.shapes:
        raise UsageError("--tiny measures the tiny shape; drop --shapes (or --tiny)")
    shapes = ["tiny"] if args.tiny else list(dict.fromkeys(args.shapes or ["seed", "gpt2-small"]))
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise UsageError(f"unknown shape {', '.join(map(repr, unknown))}; choose from: "
                         f"{', '.join(SHAPES)}")
    custom_args = [k for k in SHAPE_FIELDS if getattr(args, k, None) is not None]
    if custom_args and "custom" not in shapes:
        raise UsageError("the shape arguments (--n-layer ...) describe the `custom` shape; "
                         "add it to --shapes")
    if args.checkpoint and "seed" not in shapes:
        raise UsageError("--checkpoint gives the seed shape's weights; add seed to --shapes")
    return shapes


def _workload(name: str, args, opts):
    from dataclasses import asdict

    from ..config import ModelConfig
    from ..study.peers.bench import make_workload
    from ..study.protocol.settings import fixed_prompt

    length = opts["prompt_len"]
    if name == "seed" and args.checkpoint:
        model, tok, _ = load_checkpoint_or_fail(args.checkpoint)
        ids = []
        while len(ids) < length:
            ids += tok.encode(PROMPT_TEXT)
        prompt, weights = ids[:length], f"checkpoint {args.checkpoint}"
    else:
        config = (model_config_from_args(args, base=asdict(ModelConfig()))
                  if name == "custom" else ModelConfig(**SHAPES[name]))
        model = random_model(config, args.seed)
        prompt, weights = fixed_prompt(config, length, args.seed)[0].tolist(), f"random (seed {args.seed})"
    try:
        return make_workload(name, model, prompt, new_tokens=opts["new_tokens"],
                             long_prompt=opts["long_prompt"], seed=args.seed, weights=weights)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from ..study.peers.bench import DEFAULT_ENGINES, PeerSettings, run_peers
    from ..study.peers.engines import split_name
    from ..study.report.markdown import write_json
    from ..study.report.peer_tables import format_text, markdown

    opts = _options(args)
    shapes = _shapes(args)
    check_presets([args.phase])
    engines = args.engines or list(DEFAULT_ENGINES)
    for e in engines:
        try:
            split_name(e)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    settings = PeerSettings(new_tokens=opts["new_tokens"], runs=opts["runs"],
                            threads=tuple(opts["threads"]), phase=args.phase,
                            compile_backend=args.compile_backend)
    check_writable(args.json, "--json")
    check_writable(args.markdown, "--markdown")
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    workloads = [_workload(name, args, opts) for name in shapes]
    result = run_peers(workloads, engines, settings, log=log)
    print(format_text(result))
    if args.markdown:
        from pathlib import Path

        path = Path(args.markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown(result), encoding="utf-8")
        print(f"markdown: {path}")
    if args.json:
        print(f"results: {write_json(result.to_dict(), args.json)}")
    return 0


register(Command("peers", "smallmind against ONNX Runtime, CTranslate2, HF, llama.cpp and "
                          "torchao on the same weights, each in its own process (docs/study.md)",
                 add_arguments, run))
