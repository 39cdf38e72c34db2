"""Did something else run during a measurement? The CPU time that other processes took.

A timing on a shared machine is only a figure if the machine was quiet while it ran. The load
average says little about a few seconds, and the spread of the runs misses a disturbance that
lasts the whole measurement, so this reads the kernel's own accounting: /proc/stat's busy time
of every CPU minus this process's CPU time (/proc/self/stat, every thread of it, OpenMP's
included), both in the same clock ticks, over the measurement's wall time.

    with machine_load() as load:
        ...timed work...
    load.other_cores   # the average number of cores other processes kept busy meanwhile

Where /proc is absent (not Linux) nothing can be said: `other_cores` is None.

`memory_bandwidth_gbs()` is the other fact about the machine a timing is judged by: the read
bandwidth that a decode step's roofline divides its weights' bytes by (the study's machine
limits, tuning's sanity bound).
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import torch

QUIET_OTHER_CORES = 0.25   # other processes kept under a quarter of a core busy on average
# Runs of one figure whose slowest and fastest differ by more than this factor are disturbed:
# on a shared machine the figure says more about the neighbours than the code.
DISTURBED_RATIO = 1.5

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# The counters move in whole clock ticks (10 ms), one of which may fall at each end of an
# interval, and the kernel's own interrupt time is nobody's: so much is not counted as load.
RESOLUTION_S = 2 / _TICKS_PER_S


@dataclass(frozen=True)
class CpuSnapshot:
    busy_s: float        # every CPU's non-idle time since boot
    own_s: float         # this process's user + system time
    wall_s: float        # time.monotonic()


def snapshot() -> "CpuSnapshot | None":
    """The counters now; None where /proc/stat cannot be read."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat", encoding="ascii") as f:
            own = f.read().rsplit(")", 1)[1].split()  # the name may hold spaces: after its ")"
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    # user, nice, system, idle, iowait, irq, softirq, steal; guest time is already in user
    busy = sum(fields[:8]) - idle
    utime, stime = int(own[11]), int(own[12])  # fields 14 and 15 of proc(5), counted from 1
    return CpuSnapshot(busy / _TICKS_PER_S, (utime + stime) / _TICKS_PER_S, time.monotonic())


@dataclass(frozen=True)
class Load:
    other_cpu_s: float   # CPU seconds that other processes took in the interval
    wall_s: float

    @property
    def other_cores(self) -> float:
        """The cores other processes kept busy on average, less the counters' RESOLUTION_S."""
        return max(0.0, self.other_cpu_s - RESOLUTION_S) / self.wall_s if self.wall_s > 0 else 0.0



def busy(other_cores: "float | None") -> bool:
    """Whether other processes kept QUIET_OTHER_CORES or more busy (False where unmeasured)."""
    return other_cores is not None and other_cores >= QUIET_OTHER_CORES


def uneven(runs) -> bool:
    """Whether the slowest and fastest of a figure's runs differ by more than DISTURBED_RATIO."""
    lo, hi = min(runs), max(runs)
    return bool(lo > 0 and hi / lo > DISTURBED_RATIO)


def load_between(start: CpuSnapshot, end: CpuSnapshot) -> Load:
    """Other processes' CPU time between two snapshots (clock ticks: 10 ms steps, so an
    interval shorter than a few tenths of a second says little)."""
    other = (end.busy_s - start.busy_s) - (end.own_s - start.own_s)
    return Load(max(0.0, other), end.wall_s - start.wall_s)


class machine_load:
    """Context manager: `.load` (a Load, or None without /proc) once the block has run."""

    def __enter__(self) -> "machine_load":
        self.load = None
        self._start = snapshot()
        return self

    def __exit__(self, *exc) -> None:
        end = snapshot()
        if self._start is not None and end is not None:
            self.load = load_between(self._start, end)

    @property
    def other_cores(self) -> "float | None":
        return None if self.load is None else self.load.other_cores


def wait_until_quiet(timeout_s: float, window_s: float = 0.05) -> "float | None":
    """Wait, up to timeout_s, until other processes keep under QUIET_OTHER_CORES busy over a
    window of window_s: what a benchmark does between two contenders' runs, whose threads may
    still spin after their work (Intel's OpenMP, CTranslate2's, spins 200 ms after a parallel
    region by default). Returns the other cores of the last window (None without /proc, or
    for timeout_s <= 0, which waits for nothing)."""
    deadline = time.monotonic() + timeout_s
    other = None
    while time.monotonic() < deadline:
        with machine_load() as load:
            time.sleep(window_s)
        other = load.other_cores
        if other is None or not busy(other):
            break
    return other


def memory_bandwidth_gbs(nbytes: int = 64 * 2**20, *, device="cpu", repeat: int = 5) -> float:
    """Read bandwidth in GB/s: a float32 buffer of `nbytes` summed once, over the median of
    `repeat` timed sums after 2 untimed ones."""
    n = max(1, nbytes // 4)
    buf = torch.ones(n, dtype=torch.float32, device=device)
    sync = torch.cuda.synchronize if buf.is_cuda else (lambda: None)
    times = []
    for i in range(2 + repeat):
        sync()
        start = time.perf_counter()
        buf.sum()
        sync()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return n * 4 / statistics.median(times) / 1e9
