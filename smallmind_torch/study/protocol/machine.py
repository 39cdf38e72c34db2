"""This machine's own limits, measured in the same run as the figures they bound, and the
roofline of a preset against them.

- memory bandwidth: a stream-like read (one `sum`) over a float32 buffer of a given size,
  by default the size of the model's weights, which is what a decode step must read;
- peak GEMM rate: `torch.mm` on square float32 matrices;
- the roofline: the bytes of weights a decode step reads at the measured bandwidth, a
  preset's GEMM against torch.mm timed alongside it.
"""
from __future__ import annotations

import os
import platform
import statistics

import torch

from ... import ops
from ...forms import LINEAR_BY_WEIGHTS
from ...machine_load import memory_bandwidth_gbs
from ...weight_formats import prepare, weight_bytes_per_decode
from ..results import MachineLimits, PhaseResult
from .settings import BenchSettings, device_of, progress_bar
from .timing import gflops, median_time, spread


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


def measure_machine(model=None, settings: BenchSettings = BenchSettings(), *, device=None,
                    progress: bool = False) -> MachineLimits:
    """The limits, each the best of `settings.machine_samples` interleaved samples; the
    bandwidth over a buffer the size of `model`'s weights and over one beyond the caches."""
    device = (torch.device(device) if device is not None
              else device_of(model) if model is not None else torch.device("cpu"))
    weight_bytes = weight_bytes_per_decode(model) if model is not None else 64 * 2**20
    llc = last_level_cache_bytes()
    large = settings.bandwidth_large_bytes or max(64 * 2**20, 4 * (llc or 0))
    sizes = sorted(set(settings.peak_mm_sizes) | set(settings.gemm_sizes))
    probes = {"bandwidth_weights_gbs": lambda: memory_bandwidth_gbs(weight_bytes, device=device, repeat=3),
              "bandwidth_large_gbs": lambda: memory_bandwidth_gbs(large, device=device, repeat=3),
              **{f"mm_{n}_gflops": (lambda n=n: mm_gflops(n, device=device, repeat=settings.gemm_repeat))
                 for n in sizes}}
    samples = {name: [] for name in probes}
    # Interleaved: a burst of load from elsewhere spoils one sample of each limit, not every
    # sample of one; a limit is the best sample (the machine can do at least that).
    with progress_bar(settings.machine_samples, "machine limits", progress) as bar:
        for _ in range(settings.machine_samples):
            for name, probe in probes.items():
                samples[name].append(probe())
            if bar is not None:
                bar.update()
    best = {name: max(v) for name, v in samples.items()}
    return MachineLimits(weight_bytes, best["bandwidth_weights_gbs"], large,
                         best["bandwidth_large_gbs"], llc,
                         {n: best[f"mm_{n}_gflops"] for n in sizes}, environment(device),
                         spread={name: spread(v) for name, v in samples.items()})


# ---- a preset against the limits -------------------------------------------------------------

def matmul_gflops(opt, sizes=(128, 256, 512), *, device="cpu", repeat=5) -> tuple:
    """({n: GFLOPS of the preset's linear form on `a, w`}, {n: GFLOPS of torch.mm}) on square
    n x n matrices (for int8 / bf16 weights, on w's copy in that format, made before the
    timing). The two are timed alternately, so that their ratio compares them under the same
    machine state (on a shared machine the rate drifts from second to second)."""
    form = LINEAR_BY_WEIGHTS[opt.weights][opt.matmul]

    def linear(a, w, bias):
        with torch.no_grad():
            return form(a, w, bias)
    ours, aten = {}, {}
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        a = torch.randn(n, n, generator=g).to(device)
        w = torch.randn(n, n, generator=g).to(device)
        stored = prepare(w, opt.weights)
        candidates = {"ours": lambda: linear(a, stored, None), "aten": lambda: torch.mm(a, w.t())}
        times = {name: [] for name in candidates}
        for _ in range(repeat):
            for name, fn in candidates.items():
                times[name].append(median_time(fn, warmup=1, repeat=1, device=device))
        ours[n] = gflops(2 * n**3, statistics.median(times["ours"]))
        aten[n] = gflops(2 * n**3, statistics.median(times["aten"]))
    return ours, aten


def roofline(result: PhaseResult, machine: MachineLimits, mm_gflops_now: "dict | None" = None,
             weight_bytes: "int | None" = None) -> dict:
    """Decode as a fraction of the bandwidth roofline (the preset's `weight_bytes` read once per
    token at the machine's bandwidth; default the fp32 weights); GEMM as a fraction of torch.mm
    (timed alongside the preset's GEMM when given, else the machine's figure)."""
    weight_bytes = weight_bytes or machine.weight_bytes
    scale = weight_bytes / machine.weight_bytes  # int8 weights: a quarter of the bytes
    out = {"weight_bytes": weight_bytes, "ideal_decode_ms": machine.ideal_decode_ms * scale,
           "ideal_decode_ms_dram": machine.ideal_decode_ms_dram * scale}
    if result.decode_ms:
        out["decode_fraction_of_roofline"] = out["ideal_decode_ms"] / result.decode_ms
        out["decode_gbs"] = weight_bytes / (result.decode_ms * 1e-3) / 1e9  # weights read
    reference_mm = mm_gflops_now or machine.mm_gflops
    for n, g in result.gflops.items():
        if n in reference_mm:
            out[f"gemm_{n}_fraction_of_torch_mm"] = g / reference_mm[n]
    return out
