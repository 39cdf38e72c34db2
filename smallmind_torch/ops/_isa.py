"""Bindings of csrc/isa.cpp: which instruction-set path (ISA) the C++ kernels run.

Every kernel is compiled for AVX-512, for AVX2 + FMA and as plain C++ ("scalar"); at load the
widest the CPU supports is selected, or the one `SMALLMIND_ISA` names (it may only narrow).
`set_isa` switches for the whole process (each op call reads the selection once), so tests and
benchmarks on an AVX-512 host run the AVX2 and scalar code too; `use_isa` switches for a
`with` block and restores the previous selection after it.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from ._build import load

load()  # build / load the C++ extension (cached); raises CustomOpsUnavailable

_ops = torch.ops.smallmind

__all__ = ["isa", "set_isa", "supported_isas", "use_isa"]


def isa() -> str:
    """The ISA the kernels run now: 'avx512', 'avx2' or 'scalar'."""
    return _ops.isa()


def supported_isas() -> list:
    """The ISAs this CPU runs, widest first (e.g. ['avx512', 'avx2', 'scalar'])."""
    return list(_ops.supported_isas())


def set_isa(name: str) -> None:
    """Run the kernels on `name` from now on, process-wide. ValueError, listing what this CPU
    allows, for a name that is no ISA or one this CPU does not support."""
    if not isinstance(name, str):
        raise TypeError(f"smallmind::set_isa: the ISA name must be a str, got "
                        f"{type(name).__name__}")
    _ops.set_isa(name)


@contextlib.contextmanager
def use_isa(name: str) -> Iterator[None]:
    """`set_isa(name)` inside the block, the previous ISA restored after it."""
    previous = isa()
    set_isa(name)
    try:
        yield
    finally:
        set_isa(previous)
