"""Peers in the same run (docs/study.md, `smallmind peers`, the study's engines part): every
engine on the same weights, each in its own process, alternating run by run.

For each workload (a shape's model and its prompts) the weights are written once to a
temporary directory and `reference`'s greedy tokens are computed for every prompt. Then, per
thread count, one worker process per engine (worker.py) prepares its engine (export,
conversion: the one-time costs it reports), and for every prompt:

1. each engine generates once: its tokens are checked against reference's. An fp32 engine that
   disagrees is FAILED (first mismatching token) and never timed; an int8 or int4 engine's
   agreement (the fraction of equal tokens, the first that differs) is recorded instead; one
   whose package is missing is "not installed" (with the extra that installs it); any other
   failure, a library that fails to load included, is "error: <reason>";
2. `runs` rounds, each running every engine that passed once, in a rotating order, with a
   short pause between engines (idle thread pools of the previous one stop spinning); every
   run's tokens are checked again.

The medians (min, max) and the ratios are in results/ (EngineRow, CaseResult); an engine can
also run in this process (`InProcess`), asked the same way.
"""
from __future__ import annotations

import copy
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...check import first_mismatch
from ...machine_load import wait_until_quiet
from ..protocol.machine import environment
from ..protocol.settings import fixed_prompt
from ..protocol.timing import spread
from ..results import CaseResult, EngineRow, PeersResult
from .base import RunTiming, save_weights
from .engines import engine_weights, is_peer, make_engine, missing_packages, not_installed_reason
from .worker import answer, reason

DEFAULT_ENGINES = ("smallmind", "smallmind:max-int8", "smallmind:max-int4", "onnxruntime",
                   "onnxruntime-int8", "ctranslate2", "ctranslate2-int8", "hf", "hf-compiled",
                   "llama.cpp", "llama.cpp-q8_0", "llama.cpp-q4_0", "torchao-int8", "torchao-int4")


@dataclass(frozen=True)
class PeerSettings:
    new_tokens: int = 50
    runs: int = 5                 # timed runs per engine, after the checked warm-up
    threads: tuple = (1, 2)
    phase: str = "max"            # preset of the plain `smallmind` engine
    compile_backend: str = "inductor"  # torch.compile backend of hf-compiled
    settle_s: float = 1.0         # between two engines' runs: wait at most this long for quiet
    ready_timeout_s: float = 1800.0   # prepare (export, conversion) may take minutes
    run_timeout_s: float = 900.0      # one generation (the first may compile)

    def __post_init__(self):
        for name in ("new_tokens", "runs"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        threads = tuple(self.threads)
        if not threads or any(not isinstance(t, int) or isinstance(t, bool) or t < 1 for t in threads):
            raise ValueError(f"threads must be ints >= 1, got {self.threads!r}")
        object.__setattr__(self, "threads", threads)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Workload:
    """One shape: the model whose weights every engine gets, and its prompts (one case each)."""

    name: str
    model: object                 # a smallmind_torch.GPT
    prompts: list                 # lists of token ids
    weights: str = "random"       # description for the report
    references: list = field(default_factory=list)  # reference's greedy tokens per prompt


def make_workload(name: str, model, prompt: list, *, new_tokens: int, long_prompt: int = 0,
                  seed: int = 1234, weights: str = "random") -> Workload:
    """A shape's workload: `prompt`, plus a `long_prompt`-token prompt (random ids from `seed`)
    where the context holds it. ValueError when even `prompt` does not fit."""
    block = model.config.block_size
    if len(prompt) + new_tokens > block:
        raise ValueError(f"a {len(prompt)}-token prompt + {new_tokens} new tokens exceed the "
                         f"context of the {name} shape ({block} tokens)")
    prompts = [list(prompt)]
    if long_prompt and long_prompt != len(prompt) and long_prompt + new_tokens <= block:
        prompts.append(fixed_prompt(model.config, long_prompt, seed + 1)[0].tolist())
    return Workload(name, model.eval(), prompts, weights)


def reference_tokens(model, prompt: list, new_tokens: int) -> list:
    """`reference`'s greedy tokens after `prompt` on the model's weights."""
    import torch

    with model.using("reference"), torch.no_grad():
        out = model.generate(torch.tensor([prompt], dtype=torch.long), new_tokens, temperature=0.0)
    return out[0, len(prompt):].tolist()


# ---- one engine's process --------------------------------------------------------------------

class WorkerError(Exception):
    pass


class Worker:
    """A worker.py process: JSON lines to its stdin, JSON lines back (a reader thread)."""

    def __init__(self, engine: str, weights: Path, workdir: Path, threads: int,
                 settings: PeerSettings = PeerSettings()):
        self.engine = engine
        self.log_path = workdir / f"worker-{engine.replace(':', '-')}-{threads}t.log"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   OPENBLAS_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
                   PYTHONUNBUFFERED="1")
        with open(self.log_path, "w", encoding="utf-8") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "smallmind_torch.study.peers.worker", "--engine", engine,
                 "--weights", str(weights), "--workdir", str(workdir), "--threads", str(threads),
                 "--phase", settings.phase, "--compile-backend", settings.compile_backend],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        self.counters: dict = {}  # the engine's compile counters, as last reported
        self.counters_at_case_start: dict = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _log_tail(self) -> str:
        try:
            lines = [ln.strip() for ln in self.log_path.read_text(encoding="utf-8").splitlines()]
        except OSError:
            return ""
        lines = [ln for ln in lines if ln]
        return lines[-1][:300] if lines else ""

    def receive(self, timeout: float) -> dict:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                self.close()
                raise WorkerError(f"no answer within {timeout:.0f} s") from None
            if line is None:
                rc = self.proc.wait()
                tail = self._log_tail()
                raise WorkerError(f"the worker process exited (code {rc})" + (f": {tail}" if tail else ""))
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue  # not a protocol line

    def request(self, obj: dict, timeout: float) -> dict:
        if self.proc.poll() is not None:
            raise WorkerError(f"the worker process exited (code {self.proc.returncode})")
        try:
            self.proc.stdin.write(json.dumps(obj) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise WorkerError(f"the worker process is gone ({exc})") from None
        return self.receive(timeout)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


class InProcess:
    """An engine prepared in this process, asked as a Worker is (worker.answer): `smallmind
    bench` runs its peers here, so that their allocations are profiled beside our presets'."""

    def __init__(self, engine: str, weights: Path, workdir: Path, threads: int,
                 settings: PeerSettings = PeerSettings()):
        self.engine = make_engine(engine, threads, settings.phase, settings.compile_backend)
        self.costs = self.engine.prepare(weights, workdir)
        self.counters, self.counters_at_case_start = {}, {}

    def request(self, obj: dict, timeout: float) -> dict:
        return answer(self.engine, obj)

    def close(self):
        pass


# ---- the driver ------------------------------------------------------------------------------

def start_workers(engines, weights, workdir, threads, settings, rows: dict, log,
                  in_process: bool = False) -> dict:
    """Start a worker per installed engine at once (their imports overlap), then have them
    prepare one after the other (their one-time costs are not measured side by side); the
    workers that are ready, by engine. `in_process`: each engine in this process instead."""
    started, ready = {}, {}
    for engine in engines:
        missing = missing_packages(engine)
        if missing:
            rows[engine].status = "not installed"
            rows[engine].reason = not_installed_reason(engine, missing)
        elif in_process:
            try:
                ready[engine] = worker = InProcess(engine, weights, workdir, threads, settings)
            except Exception as exc:
                rows[engine].status, rows[engine].reason = "error", reason(exc)
                continue
            rows[engine].label, rows[engine].setup = worker.engine.label, worker.costs
            rows[engine].version = worker.engine.version()
        else:
            started[engine] = Worker(engine, weights, workdir, threads, settings)
    try:
        _prepare_one_by_one(started, rows, settings, ready, log)
    except BaseException:  # interrupted: no worker outlives the driver
        for worker in started.values():
            worker.close()
        raise
    return ready


def _prepare_one_by_one(started: dict, rows: dict, settings, ready: dict, log) -> None:
    answers = {}
    for engine, worker in started.items():  # every import done before anyone prepares
        try:
            answers[engine] = worker.receive(settings.ready_timeout_s)
        except WorkerError as exc:
            answers[engine] = {"ok": False, "error": str(exc)}
    for engine, worker in started.items():
        row, answer = rows[engine], answers[engine]
        try:
            if answer.get("ok"):
                answer = worker.request({"op": "prepare"}, settings.ready_timeout_s)
        except WorkerError as exc:
            answer = {"ok": False, "error": str(exc)}
        if not answer.get("ok"):
            row.status, row.reason = answer.get("status", "error"), answer.get("error", "")
            worker.close()
            continue
        row.label, row.version, row.setup = answer["label"], answer["version"], answer["prepare"]
        costs = ", ".join(f"{k} {v:.1f} s" for k, v in row.setup.items() if v is not None)
        log(f"  {engine}: ready ({costs or 'reused'})")
        ready[engine] = worker


def _generate(worker: Worker, prompt, reference, settings, row: EngineRow) -> "RunTiming | None":
    """One generation, its tokens checked; None (and the row marked) on failure."""
    try:
        answer = worker.request({"prompt": prompt, "new_tokens": settings.new_tokens},
                                settings.run_timeout_s)
    except WorkerError as exc:
        row.status, row.reason = "error", str(exc)
        return None
    if not answer.get("ok"):
        row.status, row.reason = "error", answer.get("error", "")
        return None
    run = RunTiming(answer["tokens"], answer["total_s"], answer["first_token_s"], answer["steps_s"])
    counters = answer.get("counters") or {}  # since the worker started; the row: this case's
    row.counters = {k: v - worker.counters_at_case_start.get(k, 0) for k, v in counters.items()}
    worker.counters = counters
    mismatch = first_mismatch(run.tokens, reference)
    if row.weights != "fp32":  # a lossy format: how far it agrees, measured, not required
        n = min(len(run.tokens), len(reference))
        row.agreement = sum(a == b for a, b in zip(run.tokens, reference)) / max(1, n)
        row.first_mismatch = mismatch
        return run
    if mismatch is not None:
        row.status, row.first_mismatch = "FAILED", mismatch
        row.reason = f"greedy tokens differ from reference's (first at token {mismatch})"
        return None
    return run


def run_case(workers: dict, rows: dict, prompt, reference, settings, log) -> None:
    """Check every engine on one prompt, then the timed runs, alternating engines."""
    live = []
    for name, worker in workers.items():
        worker.counters_at_case_start = dict(worker.counters)
        start = time.perf_counter()
        run = _generate(worker, prompt, reference, settings, rows[name])
        if run is not None:
            rows[name].first_call_s = time.perf_counter() - start
            live.append(name)
        log(f"  {name}: {rows[name].describe_status()}")
    for i in range(settings.runs):
        order = live[i % len(live):] + live[:i % len(live)] if live else []
        for name in order:
            if not rows[name].ok:
                continue
            run = _generate(workers[name], prompt, reference, settings, rows[name])
            if run is not None:
                rows[name].runs.append({"total_s": run.total_s, "tokens_per_s": run.tokens_per_s,
                                        "first_token_s": run.first_token_s, "decode_s": run.decode_s})
            wait_until_quiet(settings.settle_s)  # the last engine's threads may still spin
        log(f"  run {i + 1}/{settings.runs} of every engine done")
    for row in rows.values():
        if not row.ok:
            row.runs = []  # an engine that failed is not timed
        elif row.runs:  # medians, min and max of the timed runs
            row.tokens_per_s = _spread_of(r["tokens_per_s"] for r in row.runs)
            row.first_token_ms = _spread_of(r["first_token_s"] * 1e3 for r in row.runs)
            row.decode_ms = _spread_of(r["decode_s"] * 1e3 if r["decode_s"] is not None else None
                                       for r in row.runs)


def _spread_of(values) -> "dict | None":
    values = [v for v in values if v is not None]
    return spread(values) if values else None


def run_workload(workload: Workload, engines, settings: PeerSettings, tmp: Path,
                 log=lambda msg: None) -> list:
    """Every case of one shape at every thread count: a CaseResult per prompt."""
    n = settings.new_tokens
    weights = save_weights(workload.model, tmp / "weights.pt")
    log(f"{workload.name}: reference's greedy tokens for {len(workload.prompts)} prompt(s)")
    workload.references = [reference_tokens(workload.model, p, n) for p in workload.prompts]
    cases = [CaseResult(workload.name, len(p), n) for p in workload.prompts]
    for threads in settings.threads:
        log(f"{workload.name}, {threads} thread(s): starting {len(engines)} engine(s)")
        base_rows = {engine: EngineRow(engine, threads, is_peer(engine),
                                       weights=engine_weights(engine, settings.phase))
                     for engine in engines}
        workers = {}
        try:
            workers = start_workers(engines, weights, tmp, threads, settings, base_rows, log)
            for case, prompt, ref in zip(cases, workload.prompts, workload.references):
                log(f"{case.title}, {threads} thread(s)")
                rows = {e: copy.deepcopy(base_rows[e]) for e in engines}  # as prepared
                run_case({e: w for e, w in workers.items()}, rows, prompt, ref, settings, log)
                case.rows.extend(rows[e] for e in engines)
        finally:
            for worker in workers.values():
                worker.close()
    return cases


def run_peers(workloads, engines=DEFAULT_ENGINES, settings: PeerSettings = PeerSettings(), *,
              log=None) -> PeersResult:
    """Every workload, engine and thread count; `log(str)` reports progress (None: quiet)."""
    log = log or (lambda msg: None)
    engines = list(dict.fromkeys(
        e if ":" in e or e != "smallmind" else f"smallmind:{settings.phase}" for e in engines))
    for e in engines:
        make_engine(e, 1, settings.phase)  # ValueError for an unknown engine or preset
    result = PeersResult(settings.to_dict() | {"engines": engines},
                         environment("cpu") | {"loadavg_start": _loadavg()})
    for workload in workloads:
        result.shapes[workload.name] = {
            "model_config": asdict(workload.model.config),
            "num_parameters": workload.model.num_parameters(), "weights": workload.weights,
            "prompt_lens": [len(p) for p in workload.prompts]}
        with tempfile.TemporaryDirectory(prefix="smallmind-peers-") as tmp:
            result.cases.extend(run_workload(workload, engines, settings, Path(tmp), log))
    result.env["loadavg_end"] = _loadavg()
    return result


def _loadavg() -> "list | None":
    """1, 5 and 15 minute load averages: was anything else running on the machine?"""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None
