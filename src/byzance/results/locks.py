"""File locks that keep the writers of one results database apart, keyed by the database's
real path (symlinks resolved), so that every spelling of a path to it meets the same locks.

* ``exclusive(db_path, what)``: one holder at a time (``byzance bench``), an ``flock`` on
  ``<real path>.lock`` holding the holder's pid.
* ``WriterLock``: a writer's proof of life. A ``ResultsDB`` that claims runs holds an
  exclusive ``flock`` on a file of its own, ``<real path>.writers/<token>.lock``, for as long as
  it is open (the folder is removed with its last file); its claims (``runs.writer_lock``) name
  that file. ``writer_alive(lock_file)`` tells
  whether a claim's writer still lives: the file exists and its lock is held.

Both locks are released by the operating system when their process dies, even by SIGKILL, so
a crashed writer never blocks the next one and its runs are taken over on resume. Where
``fcntl`` does not exist (Windows) nothing is locked and every other writer counts as dead.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def real_path(db_path: str | os.PathLike[str]) -> str:
    """The absolute path of the database file with every symlink resolved (the file need not
    exist): what the locks are keyed by."""
    return os.path.realpath(os.fspath(db_path))


class LockHeld(RuntimeError):
    """``exclusive``: another process holds the lock (its pid, or ``"?"``, in ``owner``)."""

    def __init__(self, path: str, owner: str) -> None:
        super().__init__(f"{path} is locked by pid {owner}")
        self.path, self.owner = path, owner


@contextlib.contextmanager
def exclusive(db_path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on the real path of ``db_path`` (``<real path>.lock``, holding
    this pid) for the ``with`` block; ``LockHeld`` at once if another process holds it."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    path = real_path(db_path) + ".lock"
    while True:
        fh = open(path, "a+")  # noqa: SIM115 - closed below
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "?"
            fh.close()
            raise LockHeld(path, owner) from None
        # the holder before us may have unlinked the file between our open and our lock:
        # then we locked an orphan inode, and must lock the file now at ``path``
        try:
            same = os.path.samestat(os.fstat(fh.fileno()), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        fh.close()  # releases the flock


class WriterLock:
    """This writer's lock file (created and locked by ``acquire``, removed by ``release``)."""

    def __init__(self) -> None:
        self.token: str | None = None
        self.path: str | None = None
        self._fd: int | None = None

    def acquire(self, db_path: str | os.PathLike[str]) -> str:
        """Create and lock ``<real path>.writers/<token>.lock``; returns the token (once)."""
        if self.token is not None:
            return self.token
        folder = Path(real_path(db_path) + ".writers")
        token = secrets.token_hex(8)
        path = str(folder / f"{token}.lock")
        if fcntl is not None:
            for attempt in range(10):
                try:
                    folder.mkdir(exist_ok=True)
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
                    break
                except FileNotFoundError:  # the folder was just removed by a writer leaving
                    if attempt == 9:
                        raise
                except OSError as err:
                    raise ValueError(
                        f"results DB: cannot create the writer lock {path!r}: {err.strerror or err}"
                    ) from None
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            self._fd = fd
        self.token, self.path = token, path
        return token

    def release(self) -> None:
        """Unlink the file, then drop the lock (a checker then finds the writer gone)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # type: ignore[arg-type]
            with contextlib.suppress(OSError):  # the folder goes with its last writer
                os.rmdir(os.path.dirname(self.path))  # type: ignore[arg-type]
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
        self.token = self.path = None


def writer_alive(lock_file: str | None) -> bool:
    """Whether the writer whose lock file is ``lock_file`` still lives (holds its lock).

    A missing file, or one whose lock can be taken, belongs to a writer that has gone: its
    file is then removed."""
    if not lock_file or fcntl is None:
        return False
    try:
        fd = os.open(lock_file, os.O_RDWR)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        with contextlib.suppress(OSError):
            os.unlink(lock_file)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(lock_file))
        return False
    finally:
        os.close(fd)
