"""One engine in its own process: `python -m smallmind_torch.study.peers.worker --engine NAME
--weights FILE --workdir DIR --threads N` (started by bench.py, one per engine).

Once its modules are imported it prints `{"ok": true, "started": true}` and waits for a first
line on stdin (`{"op": "prepare"}`, so that the driver can start every worker at once and have
them prepare one at a time). Then it prepares the engine from the weights file (engines.py;
artifacts such as the ONNX file or the converted CTranslate2 model go to DIR, where a later
worker for the same weights finds them), prints one JSON line saying it is ready (or why not),
and answers each JSON line read on stdin, `{"prompt": [ids...], "new_tokens": n}`, with one
JSON line (`answer`): a timed greedy generation (base.RunTiming) or `{"ok": false, "error":
...}`; `{"op": "profile", "prompt": ..., "new_tokens": n}`: the allocations per token of one
generation under the profiler, as the study counts ours. EOF or `{"op": "quit"}` ends it. Everything the engines print goes to stderr, so stdout carries only these lines; try it
by hand with `echo '{"prompt": [1, 2, 3], "new_tokens": 5}' | python -m ...`.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

from ..protocol.profiling import profile_call
from .base import timed_run
from .engines import make_engine, missing_packages, not_installed_reason


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m smallmind_torch.study.peers.worker",
                                description="one engine of `smallmind peers` in its own process")
    p.add_argument("--engine", required=True, help="engines.ENGINES name (or smallmind:PRESET)")
    p.add_argument("--weights", required=True, help="file written by base.save_weights")
    p.add_argument("--workdir", required=True, help="directory for exported / converted models")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of the engine")
    p.add_argument("--phase", default="max", help="preset of the plain `smallmind` engine")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of hf-compiled")
    return p


def reason(exc: BaseException) -> str:
    """An exception in one line of at most 300 characters."""
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def answer(engine, cmd: dict) -> dict:
    """The answer to one command: a timed generation, or the allocations of one under the
    profiler (`"op": "profile"`)."""
    try:
        prompt, n = [int(t) for t in cmd["prompt"]], int(cmd["new_tokens"])
        if cmd.get("op") == "profile":
            prof = profile_call(lambda: engine.generate(prompt, n), n)
            return {"ok": True, "bytes_per_token": prof.bytes_per_token,
                    "allocs_per_token": prof.allocs_per_token}
        run = timed_run(engine, prompt, n)
        extra = engine.compile_counters() if hasattr(engine, "compile_counters") else {}
        return {"ok": True, **run.to_dict(), "counters": extra}
    except Exception as exc:
        return {"ok": False, "error": reason(exc)}


def serve(engine, lines, send) -> None:
    """Answer each command line."""
    for line in lines:
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
        except json.JSONDecodeError as exc:
            send({"ok": False, "error": f"bad command line: {exc}"})
            continue
        if cmd.get("op") == "quit":
            return
        send(answer(engine, cmd))


def main(argv: "list[str] | None" = None) -> int:
    args = _parser().parse_args(argv)
    # stdout is the protocol: keep a private copy of it and send every library print to stderr
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        engine = make_engine(args.engine, args.threads, args.phase, args.compile_backend)
        if args.threads < 1:
            raise ValueError("--threads must be >= 1")
    except ValueError as exc:
        send({"ok": False, "status": "error", "error": str(exc)})
        return 2
    missing = missing_packages(args.engine)
    if missing:
        send({"ok": False, "status": "not installed",
              "error": not_installed_reason(args.engine, missing)})
        return 0
    send({"ok": True, "started": True})  # imported: the driver starts every worker at once
    first = sys.stdin.readline()  # then has them prepare one at a time: {"op": "prepare"}
    if not first or '"quit"' in first:
        return 0
    try:
        costs = engine.prepare(Path(args.weights), Path(args.workdir))
    except Exception as exc:
        send({"ok": False, "status": "error", "error": reason(exc)})
        return 1
    send({"ok": True, "ready": True, "label": engine.label, "version": engine.version(),
          "prepare": costs, "pid": os.getpid()})
    lines = sys.stdin if '"prepare"' in first else itertools.chain([first], sys.stdin)
    serve(engine, lines, send)
    return 0


if __name__ == "__main__":
    sys.exit(main())
