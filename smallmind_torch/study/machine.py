"""This machine's own limits, measured in the same run as the figures they bound.

- memory bandwidth: a stream-like read (one `sum`) over a float32 buffer of a given size,
  by default the size of the model's weights, which is what a decode step must read;
- peak GEMM rate: `torch.mm` on square float32 matrices.
"""
from __future__ import annotations

import os
import platform

import torch

from .. import ops
from .timing import gflops, median_time


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: "torch.device | str" = "cpu") -> dict:
    device = torch.device(device)
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": str(device),
        "python": platform.python_version(),
    }
    if ops.loaded():  # the ISA the C++ kernels run and their GEMM micro-kernel
        env["ops_isa"], env["ops_gemm_kernel"] = ops.isa(), ops.kernel_name()
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def memory_bandwidth_gbs(nbytes: int = 64 * 2**20, *, device="cpu", repeat: int = 5) -> float:
    """Read bandwidth in GB/s: bytes of a float32 buffer summed once, over the median time."""
    n = max(1, nbytes // 4)
    buf = torch.ones(n, dtype=torch.float32, device=device)
    seconds = median_time(lambda: buf.sum(), warmup=2, repeat=repeat, device=device)
    return n * 4 / seconds / 1e9


def mm_gflops(n: int = 512, *, device="cpu", repeat: int = 5, mm=None) -> float:
    """GFLOPS of a square n x n x n float32 matmul with `mm` (default `torch.mm`)."""
    mm = mm or torch.mm
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    seconds = median_time(lambda: mm(a, b), warmup=2, repeat=repeat, device=device)
    return gflops(2 * n**3, seconds)


def last_level_cache_bytes() -> "int | None":
    """Size of the largest (last-level) CPU cache from sysfs, or None where unknown."""
    import glob

    best = None
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as f:
                text = f.read().strip().upper()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            size = int(digits) * scale
            best = size if best is None else max(best, size)
    return best
