"""The peers of the main table (HF's `generate` by default): an engine of peers/ on the model's
weights, measured as `smallmind peers` measures every engine (peers/bench.py): its greedy
tokens checked against reference's before it is timed, `settings.runs` timed runs after that
check, then (with `settings.profile`) the allocations of one generation under the profiler.
The study runs it in its own process, like every engine; `smallmind bench` in this one
(`in_process=True`), beside the presets it profiles.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from ..peers.base import save_weights
from ..peers.bench import PeerSettings, WorkerError, run_case, start_workers
from ..peers.engines import engine_weights, is_peer
from ...check import ReferenceRun
from ..protocol.settings import BenchSettings
from ..results import EngineRow


def measure_peer(model, name: str, settings: BenchSettings, reference: ReferenceRun, *,
                 in_process: bool = False, progress: bool = False) -> EngineRow:
    """The engine `name` (engines.PEERS) on `model`'s weights at this process's thread count,
    on reference's prompt: an EngineRow ("not installed" when its packages are missing)."""
    threads = torch.get_num_threads()
    row = EngineRow(name, threads, is_peer(name), weights=engine_weights(name))
    peer_settings = PeerSettings(new_tokens=settings.new_tokens, runs=settings.runs,
                                 threads=(threads,), settle_s=0.0)
    prompt, n = reference.prompt[0].tolist(), settings.new_tokens
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    with tempfile.TemporaryDirectory(prefix="smallmind-peer-") as tmp:
        weights = save_weights(model, Path(tmp) / "weights.pt")
        workers = start_workers([name], weights, Path(tmp), threads, peer_settings, {name: row},
                                log, in_process)
        try:
            if name in workers:
                run_case(workers, {name: row}, prompt, reference.tokens.tolist(), peer_settings, log)
            if row.ok and settings.profile:
                _profile(workers[name], row, prompt, n, peer_settings.run_timeout_s)
        finally:
            for worker in workers.values():
                worker.close()
    return row


def _profile(worker, row: EngineRow, prompt: list, n: int, timeout: float) -> None:
    try:
        answer = worker.request({"op": "profile", "prompt": prompt, "new_tokens": n}, timeout)
    except WorkerError as exc:
        answer = {"ok": False, "error": str(exc)}
    if not answer.get("ok"):
        row.status, row.reason = "error", f"profiling: {answer.get('error', '')}"
        return
    row.bytes_per_token, row.allocs_per_token = answer["bytes_per_token"], answer["allocs_per_token"]
