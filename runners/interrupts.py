"""Stopping training on SIGINT (Ctrl-C) and SIGTERM (a scheduler's pre-emption) without losing a checkpoint.

While `interruptible()` is active, either signal raises `Interrupted` in this process. Inside `deferred()` (the
writing of a checkpoint) the signal is held and raised when the block ends, so the checkpoint is completed rather
than abandoned half-written. `Interrupted` is a KeyboardInterrupt, and a process forked inside the block (a
DataLoader worker) gets a plain KeyboardInterrupt, which such workers take as the order to stop quietly.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `name` is the signal's name."""

    def __init__(self, signum: int):
        self.name = signal.Signals(signum).name
        super().__init__(self.name)


class _State:
    owner: int | None = None  # the pid that installed the handlers
    depth = 0  # nesting of `deferred()` blocks
    pending: int | None = None  # a signal held by `deferred()`


def _handler(signum: int, frame) -> None:
    if os.getpid() != _State.owner:
        raise KeyboardInterrupt
    if _State.depth:
        _State.pending = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def interruptible():
    """SIGINT and SIGTERM raise `Interrupted` while the block runs (in the main thread; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _handler) for signum in SIGNALS}
    _State.owner, _State.pending = os.getpid(), None
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _State.owner, _State.pending = None, None


@contextlib.contextmanager
def deferred():
    """Hold SIGINT and SIGTERM until the block has ended, then raise `Interrupted` for the signal that came."""
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
    if not _State.depth and _State.pending is not None:
        signum, _State.pending = _State.pending, None
        raise Interrupted(signum)
