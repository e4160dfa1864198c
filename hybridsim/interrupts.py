"""SIGINT and SIGTERM as one exception, raised where it can propagate.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when the signal is
handled; inside a finaliser (h5py frees its objects through weak-reference callbacks while a file
is written) it is printed as "Exception ignored" and lost, and the command goes on and exits 0.
SIGTERM, by default, ends the process without any clean-up. Here both signals raise
:class:`Interrupted` (a ``KeyboardInterrupt``), and none is lost:

- inside :func:`deferred` (the writing of a file) the handler only records the signal; the
  writer calls :func:`check` when its data are complete, which raises it;
- an :class:`Interrupted` swallowed by a finaliser reaches ``sys.unraisablehook``, which records
  it instead of printing "Exception ignored"; the next :func:`check` (between training steps,
  after each split, at the end of the command) raises it again.

Kept free of torch/h5py/Hydra; :func:`install` is called by the console script only.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as shells report


class Interrupted(KeyboardInterrupt):
    """The process received SIGINT or SIGTERM."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 130)


_pending: int | None = None  # a signal received and not yet raised where it can propagate
_depth = 0  # nesting of deferred() blocks
_hold = 0  # nesting of held() blocks: check() inside them leaves the signal to their owner
_default_unraisablehook = sys.unraisablehook


def _handler(signum: int, frame: object) -> None:
    global _pending
    if _depth > 0:
        _pending = signum
    else:
        raise Interrupted(signum)


def _unraisablehook(unraisable: Any) -> None:
    global _pending
    if isinstance(unraisable.exc_value, Interrupted):
        _pending = unraisable.exc_value.signum  # swallowed by a finaliser: raise it again later
        return
    _default_unraisablehook(unraisable)


def install() -> dict[int, object]:
    """Route SIGINT/SIGTERM to :class:`Interrupted`; returns the previous handlers (for
    :func:`restore`). Does nothing outside the main thread (signals are delivered there), and
    leaves a signal that the parent ignores ignored (``nohup``, background jobs of a script)."""
    global _pending, _depth, _hold
    _pending, _depth, _hold = None, 0, 0
    if threading.current_thread() is not threading.main_thread():
        return {}
    sys.unraisablehook = _unraisablehook
    previous = {}
    for signum in EXIT_CODES:
        current = signal.getsignal(signum)
        if current is signal.SIG_IGN:
            continue
        previous[signum] = current
        signal.signal(signum, _handler)
    return previous


def restore(previous: dict[int, object]) -> None:
    global _pending
    for signum, handler in previous.items():
        signal.signal(signum, handler)  # type: ignore[arg-type]
    if sys.unraisablehook is _unraisablehook:
        sys.unraisablehook = _default_unraisablehook
    _pending = None


def pending() -> int | None:
    """The signal received so far, if any."""
    return _pending


def check(force: bool = False) -> None:
    """Raise :class:`Interrupted` if a signal was held or swallowed (once: clean-up code that
    runs while it propagates, such as writing ``meta.json``, is not interrupted again). Inside
    :func:`held` only its owner raises it (``force``)."""
    global _pending
    if _pending is not None and (_hold == 0 or force):
        signum, _pending = _pending, None
        raise Interrupted(signum)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM in the block (the handler records them); a signal held when the
    outermost block ends is raised then, unless the block called :func:`check` itself."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if _depth == 0:
        check()


@contextmanager
def held() -> Iterator[None]:
    """Like :func:`deferred`, and :func:`check` inside the block (a file written atomically)
    leaves the signal pending: the block's owner raises it where it chooses, with
    ``check(force=True)`` (the ranks of a DDP run, together at the end of a step)."""
    global _depth, _hold
    _depth += 1
    _hold += 1
    try:
        yield
    finally:
        _depth -= 1
        _hold -= 1
    if _depth == 0:
        check()
