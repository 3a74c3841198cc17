"""Files that are whole or absent: written under a temporary name, flushed, then renamed."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write` on a temporary name beside `path`, flush it to disk, then rename it over
    `path`: after a crash or a power cut, readers find the old file or the whole new one."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        fsync(partial)  # else a rename can reach the disk before the data it names
        os.replace(partial, path)  # atomic on POSIX: readers see the old file or the new one
        fsync(path.parent)  # the rename itself
    finally:
        partial.unlink(missing_ok=True)


def fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') writes to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
