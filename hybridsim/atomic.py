"""Atomic file writing: a temporary file in the target's folder, then a rename.

Kept free of torch/h5py so that light commands (``hybridsim report``) can use it without paying
for those imports; ``hybridsim.data`` re-exports both writers.

Temporary files are named ``.<target name>.<random>.tmp`` and created with the user's umask
(like any file the user creates), never 0600. A process killed with SIGKILL leaves its temporary
file behind; :func:`remove_stale_temps` removes such files, and is called by whoever holds the
lock of the folder's run directory or of the data file (see ``hybridsim.locks``), so it never
removes a file that another process is still writing.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hybridsim.interrupts import check as check_interrupt
from hybridsim.interrupts import deferred

_TEMP = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{16}\.tmp$")


class NotARegularFile(ValueError):
    """A path that should be a plain file is a FIFO, a device, a socket or a folder."""


def require_regular_file(path: str | Path, what: str = "file") -> Path:
    """``path`` if it is a regular file (or a link to one); FileNotFoundError if it does not
    exist; :class:`NotARegularFile` otherwise, so that nothing blocks reading a FIFO."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(2, f"{what} does not exist", str(path)) from None
    if not stat.S_ISREG(mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(mode)
            else "a FIFO (named pipe)"
            if stat.S_ISFIFO(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "a device"
        )
        raise NotARegularFile(f"{what} {path} is {kind}, not a regular file; remove or replace it")
    return path


def _create_temp(path: Path) -> Path:
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
        try:
            # 0o666 minus the umask, as open() gives any new file (mkstemp would give 0600).
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success rename it to ``path``.

    Readers see either the old file or the complete new one, never a half-written file; on any
    error (Ctrl-C included) the temporary file is removed and ``path`` is untouched. SIGINT and
    SIGTERM are held while the file is written (a handler that raised inside a library's
    finaliser would be lost), then raised before the rename: an interrupted write is abandoned.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with deferred():
        tmp = _create_temp(path)
        try:
            yield tmp
            check_interrupt()
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def remove_stale_temps(folder: str | Path, name: str | None = None, recursive: bool = False) -> int:
    """Remove temporary files of :func:`atomic_path` left in ``folder`` by a killed process
    (only those of target ``name`` when given); returns how many. Call it only while holding the
    lock that covers every writer of that folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        m = _TEMP.match(p.name)
        if m and (name is None or m["name"] == name) and p.is_file():
            p.unlink(missing_ok=True)
            removed += 1
    return removed
