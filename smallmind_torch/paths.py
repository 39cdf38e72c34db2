"""One way to learn, before a long run, whether its results can be written where it is told:
`probe_directory` makes the directory and writes and removes a file in it."""
from __future__ import annotations

import os
from pathlib import Path

PROBE_PREFIX = ".write-test-"  # the probe's name: this, then the process id


def probe_directory(folder: "str | os.PathLike") -> None:
    """Create `folder` if needed and write a file there; raise the OSError that a write
    there would raise (permissions, a file in the way, a read-only file system)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f"{PROBE_PREFIX}{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
