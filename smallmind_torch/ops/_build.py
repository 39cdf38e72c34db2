"""Just-in-time build of the C++ ops in `ops/` (torch.utils.cpp_extension + ninja).

Every `ops/*.cpp` is compiled into one shared library, loaded with `torch.ops.load_library`
semantics (`is_python_module=False`): the ops register themselves with `TORCH_LIBRARY`.
The build directory is a cache, so a second run does not rebuild (ninja only rebuilds what
changed). Failures become `CustomOpsUnavailable` with what is missing; the phases that do
not use custom forms never call `load()`.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import threading
from pathlib import Path

import torch

OPS_DIR = Path(__file__).resolve().parents[2] / "ops"
EXTENSION_NAME = "smallmind_ops"


class CustomOpsUnavailable(RuntimeError):
    """The C++ extension could not be built or loaded."""


_lock = threading.Lock()
_loaded = False
_error: "CustomOpsUnavailable | None" = None


def _cpu_key() -> str:
    """Short hash of the CPU's model and flags: the build uses -march=native, so a tree
    carried to another machine must not reuse a library built for this one."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = []
    return hashlib.sha1("".join(lines or [platform.processor()]).encode()).hexdigest()[:8]


def build_directory() -> Path:
    default = (Path(__file__).resolve().parents[2] / "build"
               / f"ops-torch-{torch.__version__}-cpu-{_cpu_key()}")
    return Path(os.environ.get("SMALLMIND_OPS_BUILD_DIR", default))


def _ensure_ninja_on_path() -> None:
    if shutil.which("ninja"):
        return
    candidates = [Path(sys.executable).parent]
    try:
        import ninja  # the PyPI wheel ships the binary

        candidates.insert(0, Path(ninja.BIN_DIR))
    except ImportError:
        pass
    for directory in candidates:
        if (directory / "ninja").exists():
            os.environ["PATH"] = f"{directory}{os.pathsep}{os.environ.get('PATH', '')}"
            return


def load(verbose: bool = False) -> None:
    """Build (if needed) and load the extension; raise CustomOpsUnavailable on failure."""
    global _loaded, _error
    with _lock:
        if _loaded:
            return
        if _error is not None:
            raise _error
        try:
            _build_and_load(verbose)
            _loaded = True
        except CustomOpsUnavailable as exc:
            _error = exc
            raise


def _build_and_load(verbose: bool) -> None:
    sources = sorted(str(p) for p in OPS_DIR.glob("*.cpp"))
    if not sources:
        raise CustomOpsUnavailable(f"no C++ sources found in {OPS_DIR}")
    _ensure_ninja_on_path()
    if not shutil.which("ninja"):
        raise CustomOpsUnavailable(
            "building the custom ops needs ninja: `pip install ninja` (it is a dependency "
            "of smallmind-torch). Phases without custom forms keep working.")
    compiler = os.environ.get("CXX", "c++")
    if not shutil.which(compiler):
        raise CustomOpsUnavailable(
            f"building the custom ops needs a C++ compiler ({compiler!r} not found); "
            "install g++ with OpenMP. Phases without custom forms keep working.")
    from torch.utils import cpp_extension

    build_dir = build_directory()
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        cpp_extension.load(
            name=EXTENSION_NAME,
            sources=sources,
            extra_include_paths=[str(OPS_DIR)],
            extra_cflags=["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast"],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=verbose,
        )
    except Exception as exc:  # compiler errors arrive as RuntimeError / CalledProcessError
        raise CustomOpsUnavailable(
            f"building the C++ ops from {OPS_DIR} in {build_dir} failed: {exc}\n"
            "They need g++ with OpenMP and ninja. Phases without custom forms "
            "(reference, phase0, phase1, max) keep working.") from exc


def available() -> bool:
    try:
        load()
        return True
    except CustomOpsUnavailable:
        return False
