"""SIGTERM (a scheduler preempting the job, `kill`) ends a run as Ctrl-C does: its tables
written, the resume command printed."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


def ctrl_c(signum: int, frame) -> None:
    """Do what Ctrl-C does now: the handler Tune sets while trials train (stop them, keep the
    state), else a KeyboardInterrupt."""
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):
        raise KeyboardInterrupt
    handler(signal.SIGINT, frame)


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM does what Ctrl-C does inside the block. Ray's start sets a handler of its own:
    `after_ray_start` sets this one again."""
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, ctrl_c)
    try:
        yield
    finally:
        if previous is not None:  # None: set outside Python, nothing to put back
            signal.signal(signal.SIGTERM, previous)


def after_ray_start() -> None:
    """SIGTERM as Ctrl-C again: Ray's start replaced it with an abrupt exit."""
    signal.signal(signal.SIGTERM, ctrl_c)
