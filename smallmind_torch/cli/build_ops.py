"""`smallmind build-ops`: build the C++ ops ahead of use (otherwise the first custom-op phase
builds them)."""
from __future__ import annotations

import argparse

from .core import Command, CommandError, register


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="show the compiler's commands")


def run(args: argparse.Namespace) -> int:
    from .. import ops

    try:
        ops.build(verbose=args.verbose)
    except ops.CustomOpsUnavailable as exc:
        raise CommandError(str(exc)) from exc
    print(f"custom ops ready ({ops.kernel_name()} GEMM micro-kernel)")
    return 0


register(Command("build-ops", "build the C++ ops now (else the first custom-op phase builds them)",
                 add_arguments, run))
