"""One way to run with a given number of threads: `with threads(n):` (training, the study and
the command line all use it)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def threads(n: "int | None") -> Iterator[None]:
    """torch.set_num_threads(n) inside the block (n=None: leave it), restored after."""
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"the thread count must be an int >= 1, got {n!r}")
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
