"""Exclusive locks: one writer per run directory, one generator per data file.

``flock`` (BSD advisory locks, Linux and macOS): a run directory is locked through a file
descriptor of the directory itself, so locking adds no file to it; a data file ``<name>.h5`` is
locked through a zero-byte ``.<name>.h5.lock`` beside it (the data file does not exist yet). The
kernel releases a lock when its process ends, however it ends, so a killed run never leaves a
stale lock. Where ``fcntl`` is missing (Windows) the locks are no-ops; on network filesystems
``flock`` may not be shared between machines (NFS: only with ``local_lock=none``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows)
    fcntl = None  # type: ignore[assignment]


class LockBusy(RuntimeError):
    """Another process holds the lock."""


class Lock:
    """An exclusive ``flock`` on ``path`` (a directory, or a lock file created if missing)."""

    def __init__(self, path: str | Path, *, directory: bool) -> None:
        self.path = Path(path)
        self.fd: int | None = None
        self._directory = directory

    def acquire(self, blocking: bool) -> bool:
        """Take the lock; False when ``blocking`` is off and another process holds it."""
        if self.fd is not None:
            return True
        if self._directory:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        else:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is None:
            self.fd = fd
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_run_dir(run_dir: str | Path, why: str = "in use") -> Lock:
    """Lock ``run_dir`` (which must exist) for this process, or raise :class:`LockBusy`."""
    lock = Lock(run_dir, directory=True)
    if not lock.acquire(blocking=False):
        raise LockBusy(
            f"run directory {run_dir} is {why} by another hybridsim process (see its meta.json "
            "for host and pid); wait for it to finish, or stop it first"
        )
    return lock


def lock_data_file(path: str | Path) -> Lock:
    """Lock the data file ``path`` for generating it, waiting while another process does."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = Lock(path.parent / f".{path.name}.lock", directory=False)
    if not lock.acquire(blocking=False):
        print(f"waiting for another process that is writing {path} ...", file=sys.stderr)
        lock.acquire(blocking=True)
    return lock
