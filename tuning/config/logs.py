"""The logging habit every room shares: a library's logger made quieter for a while, then put
back as it was, so a program that embeds this package keeps control of its own logging."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quieter(name: str, level: int = logging.WARNING, *, unless: bool = False) -> Iterator[None]:
    """The logger `name` passes only records of `level` and above inside the block (unchanged
    if `unless`); its own level is restored after."""
    logger = logging.getLogger(name)
    previous = logger.level
    if not unless:
        logger.setLevel(max(level, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(previous)
