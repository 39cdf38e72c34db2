"""The instruction-set switch of the C++ kernels (csrc/simd.h, csrc/isa.cpp, ops/_isa.py)."""
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import ops_binding_or_skip

I = ops_binding_or_skip("_isa")

from smallmind_torch.ops import _build  # noqa: E402

from ops_isa import ISAS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_supported_isas_widest_first():
    assert ISAS[-1] == "scalar"
    assert ISAS == [name for name in ("avx512", "avx2", "scalar") if name in ISAS]
    assert I.isa() in ISAS


def test_set_isa_and_use_isa_restore():
    before = I.isa()
    for name in ISAS:
        with I.use_isa(name):
            assert I.isa() == torch.ops.smallmind.isa() == name
        assert I.isa() == before
    with pytest.raises(ZeroDivisionError):  # restored on the way out of an exception too
        with I.use_isa("scalar"):
            1 / 0
    assert I.isa() == before


def test_unknown_or_unsupported_isa_is_a_clear_error():
    before = I.isa()
    allowed = ", ".join(ISAS)
    with pytest.raises(ValueError, match=f"unknown ISA 'avx1024'.*this CPU allows: {allowed}$"):
        I.set_isa("avx1024")
    with pytest.raises(ValueError, match="unknown ISA 'AVX2'"):  # names are lower case
        torch.ops.smallmind.set_isa("AVX2")
    with pytest.raises(TypeError, match="must be a str"):
        I.set_isa(2)
    for name in ("avx512", "avx2"):
        if name not in ISAS:
            with pytest.raises(ValueError, match=f"'{name}' is not supported by this CPU; it "
                                                 f"allows: {allowed}"):
                I.set_isa(name)
    assert I.isa() == before


def test_the_build_targets_baseline_x86():
    """The AVX-512 / AVX2 paths come from target pragmas, so the library itself must not be
    built for this CPU: a build made here then runs on an older x86-64."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert not any(flag.startswith("-march") for flag in _build.CFLAGS)


def test_each_isa_layer_uses_only_itself():
    """kernels.h includes the kernel headers once per ISA, widest first: no kernel may call
    another ISA's form (isa_avx2::...), which would make a layer depend on the order of the
    layers (the AVX-512 int8 path once compiled only because AVX2's came first)."""
    kernels = (REPO / "smallmind_torch" / "csrc" / "kernels.h").read_text()
    layers = re.findall(r"#define SMALLMIND_ISA_NS (\w+)\n(.*?)#undef SMALLMIND_ISA_NS", kernels,
                        re.S)
    assert [namespace for namespace, _ in layers] == ["isa_avx512", "isa_avx2", "isa_scalar"]
    headers = {h for _, layer in layers for h in re.findall(r'#include "(\w+\.h)"', layer)}
    assert {"vec_math.h", "linear_lowp_kernel.h", "decode_kernel.h"} <= headers
    for header in sorted(headers):
        text = (REPO / "smallmind_torch" / "csrc" / header).read_text()
        assert not re.search(r"\bisa_(avx512|avx2|scalar)::", text), header


def _ops_isa_in_subprocess(env_value):
    env = {k: v for k, v in os.environ.items() if k != "SMALLMIND_ISA"}
    if env_value is not None:
        env["SMALLMIND_ISA"] = env_value
    code = ("import torch, smallmind_torch.ops as o\n"
            "try:\n"
            "    o.load()\n"
            "    print(torch.ops.smallmind.isa())\n"
            "except o.CustomOpsUnavailable as exc:\n"
            "    print('unavailable:', exc)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_environment_variable_selects_at_load():
    assert _ops_isa_in_subprocess(None) == ISAS[0]  # the widest by default
    assert _ops_isa_in_subprocess("scalar") == "scalar"
    out = _ops_isa_in_subprocess("avx1024")
    assert out.startswith("unavailable: SMALLMIND_ISA='avx1024': unknown ISA 'avx1024'"), out
    assert out.endswith(f"this CPU allows: {', '.join(ISAS)}"), out
