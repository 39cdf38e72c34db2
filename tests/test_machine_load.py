"""machine_load: other processes' CPU time during a block, from /proc/stat minus our own."""
import subprocess
import sys
import time

import pytest

from smallmind_torch.machine_load import (RESOLUTION_S, CpuSnapshot, Load, busy, load_between,
                                         machine_load, snapshot, uneven, wait_until_quiet)

pytestmark = pytest.mark.skipif(snapshot() is None, reason="no /proc/stat (not Linux)")


def _spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_busy_process_beside_us_is_seen():
    hog = subprocess.Popen([sys.executable, "-c",
                            "import time\nend = time.time() + 0.8\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.1)  # the hog is running
        with machine_load() as m:
            time.sleep(0.5)
    finally:
        hog.wait()
    assert m.load.wall_s == pytest.approx(0.5, abs=0.2)
    assert m.other_cores > 0.5  # the hog kept about one core busy
    assert busy(m.other_cores)


def test_waiting_for_quiet_waits_out_a_busy_process_and_says_so():
    """Between two contenders' runs the peers wait for quiet: a process spinning beside us
    keeps it waiting until the timeout, which returns the busy window's load."""
    assert wait_until_quiet(0) is None  # no wait asked for
    hog = subprocess.Popen([sys.executable, "-c",
                            "import time\nend = time.time() + 1.0\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.1)  # the hog is running
        start = time.monotonic()
        other = wait_until_quiet(0.3)
        waited = time.monotonic() - start
    finally:
        hog.wait()
    assert busy(other) and waited >= 0.3


def test_our_own_work_is_not_counted_as_other():
    start = snapshot()
    _spin(0.4)
    end = snapshot()
    assert end.own_s - start.own_s >= 0.25
    # whatever else ran (other tests' processes), our own 0.4 s are taken off
    assert load_between(start, end).other_cpu_s <= (end.busy_s - start.busy_s) - 0.25


def test_arithmetic():
    load = load_between(CpuSnapshot(10.0, 2.0, 100.0), CpuSnapshot(13.0, 3.0, 102.0))
    assert load == Load(other_cpu_s=2.0, wall_s=2.0)
    assert load.other_cores == pytest.approx((2.0 - RESOLUTION_S) / 2.0)
    assert Load(other_cpu_s=RESOLUTION_S, wall_s=0.05).other_cores == 0.0  # a tick is no load
    assert load_between(CpuSnapshot(10.0, 2.0, 0.0), CpuSnapshot(10.0, 2.5, 1.0)).other_cpu_s == 0.0


def test_a_figure_measured_while_another_process_ran_is_flagged():
    from smallmind_torch.study.protocol.timing import spread

    assert not spread([1.0, 1.1], other_cores=0.05)["disturbed"]
    during_load = spread([1.0, 1.1], other_cores=0.9)
    assert during_load["disturbed"] and during_load["other_cores"] == 0.9
    assert spread([1.0, 1.1])["other_cores"] is None  # not measured: the spread alone decides
    assert spread([1.0, 1.6])["disturbed"] and uneven([1.0, 1.6]) and not uneven([1.0, 1.4])
    assert not busy(None) and not busy(0.1) and busy(0.25)
