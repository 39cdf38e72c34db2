"""The package as a user gets it: a wheel built from the repo, installed in a fresh venv, runs
the custom ops from the C++ sources it ships (smallmind_torch/csrc), outside any checkout."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Run in the fresh venv: the installed package (not this tree) builds its ops into the user
# cache and each op family agrees with its plain-PyTorch reference.
CHECK = textwrap.dedent("""
    import torch, smallmind_torch, smallmind_torch.ops as o
    from smallmind_torch.fused_decode import decode_block_reference
    assert "site-packages" in smallmind_torch.__file__, smallmind_torch.__file__
    o.load_all()
    close = torch.testing.assert_close
    s = torch.randn(2, 5, 9)
    close(o.causal_softmax(s, 3), o.causal_softmax_reference(s, 3))
    q, k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    close(o.attention(q, k, v, 4), o.attention_reference(q, k, v, 4))
    x, w, b = torch.randn(3, 20), torch.randn(12, 20), torch.randn(12)
    close(o.linear(x, w, b), o.linear_reference(x, w, b), rtol=1e-4, atol=1e-4)
    close(o.layer_norm(x, w[0], b[:1].expand(20).contiguous()),
          o.layer_norm_reference(x, w[0], b[:1].expand(20).contiguous()))
    C, nh = 16, 2
    params = [torch.randn(*shape) * 0.2 for shape in
              [(C,), (C,), (3 * C, C), (3 * C,), (C, C), (C,), (C,), (C,), (4 * C, C), (4 * C,),
               (C, 4 * C), (C,)]]
    x, kc, vc = torch.randn(2, C), torch.randn(2, nh, 5, C // nh), torch.randn(2, nh, 5, C // nh)
    got, exp = [t.clone() for t in (x, kc, vc)], [t.clone() for t in (x, kc, vc)]
    with torch.no_grad():
        o.decode_block_(got[0], params, got[1], got[2], 3, nh, 1e-5)
        decode_block_reference(exp[0], params, exp[1], exp[2], 3, nh, 1e-5)
    close(got[0], exp[0], rtol=1e-5, atol=1e-5)
    print(o.build_directory())
    """)


def _run(cmd, **kw):
    result = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_wheel_installs_and_runs_the_custom_ops(tmp_path):
    # the repo's package files (not its build/ or caches), so the build cannot touch the tree
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "smallmind_torch", src / "smallmind_torch",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
          "-q", "-w", str(tmp_path / "dist")])
    (wheel,) = (tmp_path / "dist").glob("smallmind_torch-*.whl")

    # a fresh venv; the outer pip installs into it (no ensurepip), torch pinned as the
    # Makefile pins it, the rest of the dependencies as the wheel declares them
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile",
          "torch==2.13.0", str(wheel)])

    run_dir = tmp_path / "elsewhere"  # outside the repo: only the installed package imports
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("SMALLMIND_OPS_BUILD_DIR", "PYTHONPATH")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    first = _run([str(python), "-c", CHECK], cwd=run_dir, env=env, timeout=400)
    build_dir = Path(first.stdout.strip())
    assert build_dir.parent == tmp_path / "cache" / "smallmind_torch"
    assert f"building the C++ ops in {build_dir}" in first.stderr
    assert "built the C++ ops in" in first.stderr
    assert (build_dir / "smallmind_ops.so").exists()
    again = _run([str(python), "-c", CHECK], cwd=run_dir, env=env, timeout=120)
    assert again.stderr == ""  # up to date: silent
    # the command a user runs: max is the custom-op combination, built from the wheel's sources
    cli = _run([str(venv / "bin" / "smallmind"), "generate", "--phase", "max", "--prompt", "The",
                "--max-new-tokens", "5", "--temperature", "0", "--threads", "1"],
               cwd=run_dir, env=env, timeout=120)
    assert "max = fused decode" in cli.stderr, cli.stderr
    assert cli.stdout.startswith("The") and len(cli.stdout) > len("The\n")
