"""What a fused decode step costs outside its kernel: the dispatcher's and Python's share per token.

The same greedy decode steps (after a 16-token prompt, random weights, the `fused decode`
candidate of `max` on float32 weights) run five ways, alternating round by round:

- `C++ loop`: FusedStep.generate_greedy (DecodeModel.generate_greedy), every step in one C++
  call, no Python between them;
  the floor the others are read against;
- `held step`: DecodeModel.step, one Python call per token with four arguments (what
  FusedStep calls);
- `op, ~60 tensors`: torch.ops.smallmind.decode_step_ with its every tensor per call (the hot
  path before the model was held in C++);
- `generate_stream`: model.generate_stream, one token per yield (a stream's Python per token);
- `generate`: model.generate (greedy: the steps the cache holds in one call).

The two generate rows time the whole call less the prompt's prefill, timed in the same round.
Each figure: µs per token, median with min and max over the rounds, and its excess over the
C++ loop. A round that other processes disturbed (machine_load) is flagged, not dropped.

    python experiments/python_per_token.py [--shape seed|gpt2-small|tiny] [--threads N]
                                           [--tokens N] [--rounds N]
"""
from __future__ import annotations

import argparse
import time

import torch

from smallmind_torch import GPT, ModelConfig
from smallmind_torch.cli.core import TINY_SHAPE
from smallmind_torch.config import GPT2_SMALL, MAX_CANDIDATES
from smallmind_torch.machine_load import machine_load
from smallmind_torch.study.protocol.timing import spread
from smallmind_torch.study.report.tables import spread_cell, text_table
from smallmind_torch.threads import threads

SHAPES = {"seed": ModelConfig(), "gpt2-small": GPT2_SMALL, "tiny": ModelConfig(**TINY_SHAPE)}
PROMPT = 16


def contenders(model, tokens: int) -> dict:
    """name -> a function running the same `tokens` greedy steps after the prompt (the
    generate rows: the whole call) on the prefilled model."""
    prompt = torch.randint(0, model.config.vocab_size, (1, PROMPT),
                           generator=torch.Generator().manual_seed(0))
    model.setup_caches(max_batch=1)
    model.prefill(prompt)
    step = model.phase.fused_step
    logits = torch.empty(1, 1, model.config.vocab_size)
    next_tokens = torch.empty(1, 1, dtype=torch.long)
    buffer = torch.zeros(1, tokens + 1, dtype=torch.long)  # column i: the token of step i
    op = torch.ops.smallmind.decode_step_.default
    columns = [buffer[:, i:i + 1] for i in range(tokens)]

    def cpp_loop():
        step.generate_greedy(buffer, 1, tokens, PROMPT)

    def held_step():
        run = step.step_op  # DecodeModel.step, as FusedStep calls it
        for i, column in enumerate(columns):
            run(column, PROMPT + i, logits, next_tokens)

    def op_call():
        for i, column in enumerate(columns):
            op(column, PROMPT + i, *step.args, logits, next_tokens)

    def stream():
        for _ in model.generate_stream(prompt, tokens + 1):
            pass

    def generate():
        model.generate(prompt, tokens + 1)

    def prefill():
        model.prefill(prompt)

    return {"C++ loop": cpp_loop, "held step": held_step, "op, ~60 tensors": op_call,
            "generate_stream": stream, "generate": generate, "prefill": prefill}


def measure(shape: str, n_threads: int, tokens: int, rounds: int) -> dict:
    """name -> per-token µs of every round, and the machine's load over all of them."""
    torch.manual_seed(0)
    model = GPT(SHAPES[shape]).eval().set_phase(MAX_CANDIDATES["fused decode"])
    times = {}
    with threads(n_threads), torch.no_grad(), machine_load() as load:
        runs = contenders(model, tokens)
        for fn in runs.values():
            fn()  # warm-up: scratch buffers, the workspace's views
        for _ in range(rounds):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times.setdefault(name, []).append(time.perf_counter() - start)
    prefill = times.pop("prefill")
    per_token = {}
    for name, runs in times.items():
        if name.startswith("generate"):  # less the prompt's prefill of the same round
            runs = [t - p for t, p in zip(runs, prefill)]
        per_token[name] = [1e6 * t / tokens for t in runs]
    return {"per_token_us": per_token, "other_cores": load.other_cores}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="seed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    room = SHAPES[args.shape].block_size - PROMPT - 1
    if not 1 <= args.tokens <= room:
        parser.error(f"--tokens must lie in [1, {room}] (the cache holds "
                     f"{SHAPES[args.shape].block_size} positions after a {PROMPT}-token prompt), "
                     f"got {args.tokens}")
    if args.threads < 1 or args.rounds < 1:
        parser.error(f"--threads and --rounds must be >= 1, got {args.threads} and {args.rounds}")
    result = measure(args.shape, args.threads, args.tokens, args.rounds)
    floor = spread(result["per_token_us"]["C++ loop"])["median"]
    rows = []
    for name, runs in result["per_token_us"].items():
        s = spread(runs, result["other_cores"])
        rows.append([name, spread_cell(s, 1), f"{s['median'] - floor:+.1f}",
                     f"{(s['median'] - floor) / s['median']:.0%}"])
    load = ("unknown" if result["other_cores"] is None
            else f"{result['other_cores']:.2f} cores")
    print(f"{args.shape} shape, {args.threads} thread(s), {args.tokens} greedy steps after a "
          f"{PROMPT}-token prompt, fused decode on float32 weights, {args.rounds} rounds "
          f"alternating; other processes kept {load} busy meanwhile")
    print(text_table(["path", "µs per token", "over the C++ loop", "share of the path"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
