"""Just-in-time build of the C++ ops in `smallmind_torch/csrc` (torch.utils.cpp_extension, ninja).

The `csrc/*.cpp` compile as UNITS translation units (generated files that each `#include` every
UNITS-th source), which ninja compiles in parallel: the torch headers (~9 s each time on this
class of machine) are parsed once per unit instead of once per op, and the two cores of a small
machine both work (one unit left one idle: 27 s against ~18 s for a first build). (Each .cpp still
compiles on its own, and includes only the ATen headers it uses.) The library is loaded with
`is_python_module=False`: the ops register themselves with `TORCH_LIBRARY`. Failures become
`CustomOpsUnavailable` saying what is missing; the phases that do not use custom forms never
call `load()`.

The build directory is a cache keyed by everything the library depends on (torch's version,
install path and headers, the Python environment, the compiler and its flags, the CPU), so two
environments sharing a checkout never rebuild each other's copy. It lives under `<repo>/build`
in a source checkout, else under the user cache dir; `SMALLMIND_OPS_BUILD_DIR` overrides.

One build at a time per directory: an `fcntl` lock that the kernel releases when its owner
dies, so a killed build can never block later ones. A wait says what it waits for and gives up
after `SMALLMIND_OPS_LOCK_TIMEOUT` seconds. Under that lock, torch's own `lock` file (which a
killed build leaves behind, and which torch would wait on forever) is known to be stale and
is removed with a warning. A directory whose library is current (newer than every source) is
loaded as it is, with no lock and no write, so a prebuilt read-only directory works.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import platform
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # not POSIX: no build lock (the ops need g++ with OpenMP anyway)
    fcntl = None

CSRC_DIR = Path(__file__).resolve().parents[1] / "csrc"
EXTENSION_NAME = "smallmind_ops"
# x86-64: no -march=native. The kernels carry their own AVX-512 / AVX2 paths (target pragmas,
# see csrc/simd.h) and pick one at load, so the library runs on any x86-64 CPU. Elsewhere the
# kernels have their plain C++ path only, and -march=native lets the compiler vectorize it.
_X86 = platform.machine().lower() in ("x86_64", "amd64")
CFLAGS = ["-O3", *([] if _X86 else ["-march=native"]), "-fopenmp", "-ffp-contract=fast"]
LDFLAGS = ["-fopenmp"]
LOCK_FILE = "smallmind-build.lock"
LOCK_TIMEOUT_ENV = "SMALLMIND_OPS_LOCK_TIMEOUT"
ISA_ENV = "SMALLMIND_ISA"  # narrows the kernels' instruction set: avx512, avx2 or scalar
DEFAULT_LOCK_TIMEOUT = 600.0  # seconds; a first build takes well under a minute on 2 cores


class CustomOpsUnavailable(RuntimeError):
    """The C++ extension could not be built or loaded."""

    retry = False  # True: a later load() may succeed (a busy build lock), so it is not cached


_lock = threading.Lock()
_loaded = False
_error: "CustomOpsUnavailable | None" = None


def _say(message: str) -> None:
    print(f"smallmind: {message}", file=sys.stderr, flush=True)


# ---- where to build -------------------------------------------------------------------------

def _cpu_description() -> str:
    """The CPU's model and flags. Off x86 the build uses -march=native, so a tree carried to
    another machine must not reuse a library built for this one; on x86 the library runs
    anywhere, and the key still names the CPU so that each machine's build is its own."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = []
    return "".join(lines) or platform.processor()


def _compiler() -> str:
    return os.environ.get("CXX", "c++")


def _compiler_identity() -> str:
    """The compiler's resolved path and mtime: changes when it is replaced or upgraded."""
    path = shutil.which(_compiler())
    if path is None:
        return _compiler()
    real = os.path.realpath(path)
    try:
        return f"{real}:{os.stat(real).st_mtime_ns}"
    except OSError:
        return real


def build_key() -> str:
    """Hash of everything the built library depends on besides its sources."""
    from torch.utils import cpp_extension

    parts = [
        torch.__version__, os.path.realpath(os.path.dirname(torch.__file__)),
        *cpp_extension.include_paths(), sys.prefix, sys.implementation.cache_tag,
        str(CSRC_DIR), _compiler_identity(), *CFLAGS, *LDFLAGS, _cpu_description(),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


@functools.cache
def sources_digest() -> str:
    """Hash of the C++ sources (csrc/*.cpp, *.h) as this process first read them (the library
    it loads is built from them): what a choice measured on the built kernels (tuning's cache
    of `max`) is only valid for."""
    digest = hashlib.sha256()
    for path in sorted([*CSRC_DIR.glob("*.cpp"), *CSRC_DIR.glob("*.h")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _source_checkout() -> "Path | None":
    """The repository root when the package runs from a source checkout (editable install)."""
    root = CSRC_DIR.parents[1]
    try:
        pyproject = (root / "pyproject.toml").read_text()
    except OSError:
        return None
    return root if 'name = "smallmind-torch"' in pyproject else None


def build_directory() -> Path:
    """Where the library is built: `SMALLMIND_OPS_BUILD_DIR`, else `<repo>/build/ops-...` in a
    source checkout, else `$XDG_CACHE_HOME/smallmind_torch/ops-...` (`~/.cache` by default)."""
    override = os.environ.get("SMALLMIND_OPS_BUILD_DIR")
    if override:
        return Path(override)
    name = f"ops-torch-{torch.__version__}-{build_key()}"
    root = _source_checkout()
    if root is not None:
        return root / "build" / name
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "smallmind_torch" / name


# ---- one build at a time ---------------------------------------------------------------------

def _lock_timeout() -> float:
    value = os.environ.get(LOCK_TIMEOUT_ENV)
    if not value:
        return DEFAULT_LOCK_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not (math.isfinite(seconds) and seconds >= 0):  # nan would mean "wait forever"
        raise CustomOpsUnavailable(
            f"{LOCK_TIMEOUT_ENV} must be a finite number of seconds >= 0, got {value!r}")
    return seconds


def _lock_owner(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


@contextlib.contextmanager
def build_lock(build_dir: Path, timeout: float):
    """Hold the build directory's lock (`smallmind-build.lock`, with the owner's pid in it).

    The kernel drops an fcntl lock when its process dies, so it is never stale. While another
    live process holds it, say once what we wait for, and give up after `timeout` seconds."""
    if fcntl is None:
        yield
        return
    path = build_dir / LOCK_FILE
    try:
        f = open(path, "a+")
    except OSError as exc:  # a read-only directory whose library is out of date, say
        raise CustomOpsUnavailable(
            f"cannot take the C++ ops build lock {path} ({exc}), so the ops cannot be built "
            f"there; set SMALLMIND_OPS_BUILD_DIR to a writable directory") from exc
    with f:
        start = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                if waited >= timeout:
                    busy = CustomOpsUnavailable(
                        f"gave up after {timeout:g} s waiting for the C++ ops build lock {path}, "
                        f"held by {_lock_owner(path)} (building the ops in {build_dir}). Let "
                        f"that build finish or stop it; set {LOCK_TIMEOUT_ENV} to wait longer.")
                    busy.retry = True
                    raise busy from None
                if not told and waited >= 1.0:
                    _say(f"waiting for {_lock_owner(path)}, which is building the C++ ops "
                         f"(lock {path}; giving up after {timeout:g} s, see {LOCK_TIMEOUT_ENV})")
                    told = True
                time.sleep(0.1)
        try:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_stale_torch_lock(build_dir: Path) -> None:
    """torch's FileBaton `lock` file, present while we hold the build lock, was left by a build
    that was killed (its `finally` never ran); torch would wait on it forever."""
    stale = build_dir / "lock"
    if stale.exists():
        warnings.warn(
            f"smallmind: removing the stale build lock {stale}, left by a C++ ops build that was "
            "killed (no build holds this directory's lock now)", RuntimeWarning, stacklevel=4)
        stale.unlink(missing_ok=True)


# ---- build and load --------------------------------------------------------------------------

UNITS = 2  # translation units: one per core of a 2-core machine


def unit_sources(sources: list) -> list:
    """The sources of each translation unit: every UNITS-th of the sorted list, so the heavy
    ones (decode, gemm, attention, the low-precision linears) spread over the units."""
    ordered = sorted(sources)
    return [ordered[i::UNITS] for i in range(UNITS) if ordered[i::UNITS]]


def _unity_text(sources: list) -> str:
    return ("// Generated by smallmind_torch/ops/_build.py: these csrc/*.cpp as one translation\n"
            "// unit, so the torch headers are parsed once for them.\n"
            + "".join(f'#include "{Path(s).name}"\n' for s in sources))


def _unit_path(build_dir: Path, i: int) -> Path:
    return build_dir / f"{EXTENSION_NAME}_unit{i}.cpp"


def _unity_sources(build_dir: Path, sources: list) -> list:
    """The translation units, each `#include`ing its sources. Rewritten only when its text
    changes, so ninja's timestamps stay meaningful (it tracks the included files itself)."""
    paths = []
    for i, group in enumerate(unit_sources(sources)):
        path, text = _unit_path(build_dir, i), _unity_text(group)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        paths.append(path)
    return paths


def _load_prebuilt(build_dir: Path, sources: list) -> bool:
    """Load the library as it is when nothing needs building (its unit sources current, the
    library newer than every source): no lock, no write, so a read-only prebuilt directory
    works. False when a build is needed or the library does not load (a killed link, say)."""
    try:
        units = [_unit_path(build_dir, i) for i in range(len(unit_sources(sources)))]
        for path, group in zip(units, unit_sources(sources)):
            if not path.is_file() or path.read_text() != _unity_text(group):
                return False
        if _needs_build(build_dir, units):
            return False
        torch.ops.load_library(str(build_dir / f"{EXTENSION_NAME}.so"))
    except (OSError, RuntimeError):
        return False
    return True


def _needs_build(build_dir: Path, units: list) -> bool:
    """Whether the library is missing or older than a source (to say so; ninja decides)."""
    library = build_dir / f"{EXTENSION_NAME}.so"
    if not library.exists():
        return True
    inputs = [*units, *CSRC_DIR.glob("*.cpp"), *CSRC_DIR.glob("*.h")]
    return library.stat().st_mtime < max(p.stat().st_mtime for p in inputs)


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
            if not exc.retry:
                _error = exc  # a failed build fails the same way again: say it at once
            raise


def _build_and_load(verbose: bool) -> None:
    sources = sorted(str(p) for p in CSRC_DIR.glob("*.cpp"))
    if not sources:
        raise CustomOpsUnavailable(
            f"no C++ sources found in {CSRC_DIR}; the package was installed without its csrc/ "
            "folder. Phases without custom forms keep working.")
    _ensure_ninja_on_path()
    if not shutil.which("ninja"):
        raise CustomOpsUnavailable(
            "building the custom ops needs ninja: `pip install ninja` (it is a dependency "
            "of smallmind-torch). Phases without custom forms keep working.")
    if not shutil.which(_compiler()):
        raise CustomOpsUnavailable(
            f"building the custom ops needs a C++ compiler ({_compiler()!r} not found); "
            "install g++ with OpenMP. Phases without custom forms keep working.")
    from torch.utils import cpp_extension

    build_dir = build_directory()
    if _load_prebuilt(build_dir, sources):
        _apply_isa_env()
        return
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CustomOpsUnavailable(
            f"cannot create the C++ ops build directory {build_dir}: {exc}; set "
            "SMALLMIND_OPS_BUILD_DIR to a writable directory") from exc
    with build_lock(build_dir, _lock_timeout()):
        _remove_stale_torch_lock(build_dir)
        units = _unity_sources(build_dir, sources)
        building = _needs_build(build_dir, units)
        if building:
            _say(f"building the C++ ops in {build_dir} (once per environment and source "
                 "change; roughly 20-40 s on 2 cores) ...")
        start = time.monotonic()
        try:
            cpp_extension.load(
                name=EXTENSION_NAME,
                sources=[str(u) for u in units],
                extra_include_paths=[str(CSRC_DIR)],
                extra_cflags=list(CFLAGS),  # copies: torch appends to the lists it is given
                extra_ldflags=list(LDFLAGS),
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=verbose,
            )
        except Exception as exc:  # compiler errors arrive as RuntimeError / CalledProcessError
            raise CustomOpsUnavailable(
                f"building the C++ ops from {CSRC_DIR} in {build_dir} failed: {exc}\n"
                "They need g++ with OpenMP and ninja. Phases without custom forms "
                "keep working.") from exc
        if building:
            _say(f"built the C++ ops in {time.monotonic() - start:.0f} s")
    _apply_isa_env()


def _apply_isa_env() -> None:
    """SMALLMIND_ISA was applied when the library loaded if it names an ISA this CPU runs; a
    bad value (which the loader could only ignore) fails here, saying what this CPU allows."""
    name = os.environ.get(ISA_ENV)
    if not name:
        return
    try:
        torch.ops.smallmind.set_isa(name)
    except (RuntimeError, ValueError) as exc:
        why = str(exc).replace("smallmind::set_isa: ", "")
        raise CustomOpsUnavailable(f"{ISA_ENV}={name!r}: {why}") from exc


def loaded() -> bool:
    """Whether the extension is built and loaded in this process (nothing is built by asking)."""
    return _loaded


def available() -> bool:
    try:
        load()
        return True
    except CustomOpsUnavailable:
        return False
