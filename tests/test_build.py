"""The JIT build of the C++ ops (smallmind_torch/ops/_build.py): where it builds, what it says,
and that a killed build or a busy one never makes a later load hang."""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from smallmind_torch.ops import CustomOpsUnavailable, _build

REPO = Path(__file__).resolve().parents[1]
# loads the ops, then names where they were built (the key must not drift during the load)
LOAD = "import smallmind_torch.ops as o; o.load_all(); print(o.build_directory())"


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("SMALLMIND_OPS_BUILD_DIR", _build.LOCK_TIMEOUT_ENV)}
    env.update(extra)
    return env


def _python(code, env, timeout):
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


# ---- the build directory is keyed by the whole toolchain (D9) ----

def test_key_changes_with_anything_the_library_depends_on(monkeypatch):
    from torch.utils import cpp_extension

    key = _build.build_key()
    assert _build.build_key() == key and len(key) == 16
    with monkeypatch.context() as m:  # another venv on the same checkout and torch version
        m.setattr(sys, "prefix", "/elsewhere/venv")
        assert _build.build_key() != key
    with monkeypatch.context() as m:  # torch installed somewhere else (its headers too)
        m.setattr(cpp_extension, "include_paths", lambda *a, **k: ["/other/torch/include"])
        assert _build.build_key() != key
    with monkeypatch.context() as m:
        m.setenv("CXX", "some-other-c++")
        assert _build.build_key() != key
    with monkeypatch.context() as m:
        m.setattr(_build, "CFLAGS", [*_build.CFLAGS, "-g"])
        assert _build.build_key() != key
    with monkeypatch.context() as m:
        m.setattr(_build, "_cpu_description", lambda: "another CPU")
        assert _build.build_key() != key
    assert _build.build_key() == key


def test_build_directory_location(monkeypatch, tmp_path):
    monkeypatch.delenv("SMALLMIND_OPS_BUILD_DIR", raising=False)
    in_repo = _build.build_directory()
    assert in_repo.parent == REPO / "build" and in_repo.name.endswith(_build.build_key())
    monkeypatch.setattr(_build, "_source_checkout", lambda: None)  # an installed wheel
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _build.build_directory().parent == tmp_path / "smallmind_torch"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _build.build_directory().parent == tmp_path / "home" / ".cache" / "smallmind_torch"
    monkeypatch.setenv("SMALLMIND_OPS_BUILD_DIR", str(tmp_path / "mine"))
    assert _build.build_directory() == tmp_path / "mine"


def test_up_to_date_load_says_nothing():
    _build.load()  # built (if needed) in this process first, where SMALLMIND_OPS_BUILD_DIR says
    result = _python(LOAD, _env(SMALLMIND_OPS_BUILD_DIR=str(_build.build_directory())), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert (Path(result.stdout.strip()) / f"{_build.EXTENSION_NAME}.so").exists()


# ---- one build at a time; no hang on a lock whose owner is gone (D3) ----

def _hold_lock(build_dir: Path):
    """A live process holding the build lock, as a running build does."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        f = open({str(build_dir / _build.LOCK_FILE)!r}, "a+")
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0); f.truncate(); f.write(f"{{os.getpid()}}\\n"); f.flush()
        print("locked", flush=True)
        time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_live_lock_owner_times_out_with_a_message(tmp_path, monkeypatch, capsys):
    holder = _hold_lock(tmp_path)
    try:
        monkeypatch.setenv("SMALLMIND_OPS_BUILD_DIR", str(tmp_path))
        monkeypatch.setenv(_build.LOCK_TIMEOUT_ENV, "1.5")
        start = time.monotonic()
        with pytest.raises(CustomOpsUnavailable) as info:
            _build._build_and_load(verbose=False)  # the load path, past this process's cache
        assert time.monotonic() - start < 10
        message = str(info.value)
        assert str(tmp_path / _build.LOCK_FILE) in message
        assert f"process {holder.pid}" in message and _build.LOCK_TIMEOUT_ENV in message
        assert info.value.retry  # not cached by load(): the next call tries again
        waiting = capsys.readouterr().err  # said once, while waiting, what it waits for
        assert f"waiting for process {holder.pid}" in waiting and _build.LOCK_FILE in waiting
    finally:
        holder.kill()
        holder.wait()
    # the kernel drops the lock with its owner: nothing stale is left to wait for
    with _build.build_lock(tmp_path, timeout=0.5):
        assert (tmp_path / _build.LOCK_FILE).read_text().strip() == str(os.getpid())


@pytest.mark.parametrize("value", ["ten", "nan", "-1", "inf"])
def test_bad_lock_timeout_is_a_clear_error(monkeypatch, tmp_path, value):
    """nan would mean "wait forever"; every value but a finite number of seconds is refused."""
    monkeypatch.setenv("SMALLMIND_OPS_BUILD_DIR", str(tmp_path))
    monkeypatch.setenv(_build.LOCK_TIMEOUT_ENV, value)
    with pytest.raises(CustomOpsUnavailable,
                       match=f"{_build.LOCK_TIMEOUT_ENV} must be a finite number of seconds >= 0"):
        _build._build_and_load(verbose=False)


def test_stale_torch_lock_is_removed_with_a_warning(tmp_path):
    stale = tmp_path / "lock"
    stale.touch()
    with _build.build_lock(tmp_path, timeout=1.0):
        with pytest.warns(RuntimeWarning, match="removing the stale build lock"):
            _build._remove_stale_torch_lock(tmp_path)
    assert not stale.exists()


@pytest.mark.slow
def test_killed_build_leaves_nothing_that_blocks_the_next(tmp_path):
    """End to end, in fresh processes: torch's `lock` file left by a SIGKILLed build made every
    later load wait forever at 0 % CPU. Now the next load warns, removes it and builds (saying
    so on stderr, with the time it took); the one after that is silent."""
    build_dir = tmp_path / "ops"
    build_dir.mkdir()
    (build_dir / "lock").write_text("")  # what a killed build leaves
    env = _env(SMALLMIND_OPS_BUILD_DIR=str(build_dir))
    first = _python(LOAD, env, timeout=240)
    assert first.returncode == 0, first.stderr
    assert "removing the stale build lock" in first.stderr
    assert f"building the C++ ops in {build_dir}" in first.stderr
    assert "built the C++ ops in" in first.stderr
    assert not (build_dir / "lock").exists()
    assert first.stdout.strip() == str(build_dir)
    second = _python(LOAD, env, timeout=120)
    assert second.returncode == 0 and second.stderr == ""


def test_a_prebuilt_directory_loads_without_its_lock():
    """A directory whose library is current is loaded as it is: no lock, nothing written (a
    read-only prebuilt directory), and then every phase runs."""
    _build.load()
    code = textwrap.dedent("""
        from smallmind_torch import GPT, ModelConfig
        from smallmind_torch.ops import _build

        def read_only(*args, **kwargs):
            raise PermissionError(13, "Read-only file system")

        _build.build_lock = read_only
        model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=64, block_size=16))
        print(model.set_phase("max").phase.description)
        """)
    result = _python(code, _env(SMALLMIND_OPS_BUILD_DIR=str(_build.build_directory())), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("max = fused decode")


def test_a_directory_that_cannot_be_built_in_is_a_clear_error_and_max_falls_back(tmp_path):
    (tmp_path / _build.LOCK_FILE).mkdir()  # the lock cannot be opened: as in a read-only directory
    code = textwrap.dedent("""
        from smallmind_torch import GPT, ModelConfig, ops
        model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=64, block_size=16))
        print(model.set_phase("max").phase.description)
        try:
            ops.load_all()
        except ops.CustomOpsUnavailable as exc:
            print("unavailable:", exc)
        """)
    result = _python(code, _env(SMALLMIND_OPS_BUILD_DIR=str(tmp_path)), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("max = sdpa + kv cache")
    assert "cannot take the C++ ops build lock" in result.stdout
    assert "SMALLMIND_OPS_BUILD_DIR to a writable directory" in result.stdout
