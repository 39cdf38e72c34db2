"""One way to run with a given number of threads: `with threads(n):` (training, the study and
the command line all use it)."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

# More threads than this is a typo, not a setting: OpenMP aborts (and the process crashes) when
# it cannot create the threads it was asked for.
MAX_THREADS = 4 * max(2, os.cpu_count() or 1)


@contextlib.contextmanager
def threads(n: "int | None") -> Iterator[None]:
    """torch.set_num_threads(n) inside the block (n=None: leave it), restored after; n from 1 to
    MAX_THREADS (4 x the CPUs)."""
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_THREADS):
        raise ValueError(f"the thread count must be an int from 1 to {MAX_THREADS} (4 x this "
                         f"machine's CPUs), got {n!r}")
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
