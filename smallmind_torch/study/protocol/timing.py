"""Timing helpers shared by the measurements and the experiments.

One way to time a thing: `median_time(fn)`; one way to keep a figure's runs: `spread(runs)`.
GPU work is synchronized with `device_sync` instead of bare `torch.cuda` calls, so the same
code times CPU and CUDA. (One way to run with a given number of threads:
`with smallmind_torch.threads.threads(n):`.)
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from ...machine_load import busy, uneven


def spread(values, other_cores: "float | None" = None) -> dict:
    """min / median / max of a figure's runs, and whether they were disturbed: runs that differ
    by more than DISTURBED_RATIO, or other processes that kept QUIET_OTHER_CORES or more busy
    meanwhile (`other_cores`, machine_load's, when it was measured)."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "runs": len(values), "other_cores": other_cores,
            "disturbed": uneven(values) or busy(other_cores)}


def device_sync(device: "torch.device | str | None" = None) -> None:
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device is None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def sample_times(fn: Callable[[], object], *, warmup: int = 1, repeat: int = 3,
                 device: "torch.device | str | None" = None) -> list:
    """Wall times of `repeat` calls of `fn()` in seconds, after `warmup` untimed calls."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    for _ in range(warmup):
        fn()
    device_sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        device_sync(device)
        times.append(time.perf_counter() - start)
    return times


def median_time(fn: Callable[[], object], *, warmup: int = 1, repeat: int = 3,
                device: "torch.device | str | None" = None) -> float:
    """Median wall time of `fn()` in seconds, after `warmup` untimed calls."""
    return statistics.median(sample_times(fn, warmup=warmup, repeat=repeat, device=device))


def gflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e9

