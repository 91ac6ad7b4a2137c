"""One writer per output folder: an exclusive `fcntl.flock` on `<folder>/.culturelens.lock`.

A second job that names the same folder fails at once with the holder's pid instead of
interleaving its files with the first one's. The kernel drops a flock when its process
dies, so a lock left by a killed run never blocks the next one (the file stays, the lock
does not). A run that ends removes the file while it still holds the lock, and a taker checks
after locking that the path still names the file it locked (else it retries), so two
processes can never both hold the lock of one folder through an old and a new file.

Locks are re-entrant within a process (a job that locks `out` may call another that locks
`out` again), since flock would otherwise refuse the second open of the same file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from pathlib import Path
from types import TracebackType

from interp.errors import CultureLensError

LOCK_NAME = ".culturelens.lock"

# resolved folder -> [open lock file descriptor, how many holders in this process]
_held: dict[Path, list[int]] = {}


class FolderBusyError(CultureLensError):
    """The output folder is being written by another live process; the message names its pid."""


def _prepare(folder: Path, what: str) -> Path:
    if folder.exists() and not folder.is_dir():
        raise CultureLensError(f"{what} {folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CultureLensError(f"{what} {folder}: cannot create the folder: {e.strerror}") from e
    return folder.resolve()


class FolderLock:
    """Context manager holding the exclusive lock of `folder` (created if missing)."""

    def __init__(self, folder: str | Path, what: str = "output folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self._key: Path | None = None

    def acquire(self) -> "FolderLock":
        key = _prepare(self.folder, self.what)
        if key in _held:
            _held[key][1] += 1
            self._key = key
            return self
        path = key / LOCK_NAME
        while True:
            fd = self._open_locked(path)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file as we locked it: take the new one
        info = f"pid {os.getpid()}, started {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, " \
               f"command {' '.join(sys.argv)[:200]}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, (info + "\n").encode(), 0)
        _held[key] = [fd, 1]
        self._key = key
        return self

    def _open_locked(self, path: Path) -> int:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise CultureLensError(f"{self.what} {self.folder}: cannot create the lock file {path}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown pid"
            os.close(fd)
            raise FolderBusyError(f"{self.what} {self.folder} is in use by another culturelens process ({holder}); "
                                  f"wait for it to end or choose another folder") from None
        except OSError as e:  # e.g. a file system without flock: say so rather than run unlocked silently
            os.close(fd)
            raise CultureLensError(f"{self.what} {self.folder}: cannot lock {path}: {e.strerror}") from e
        return fd

    def release(self) -> None:
        if self._key is None:
            return
        entry = _held[self._key]
        entry[1] -= 1
        if entry[1] == 0:
            del _held[self._key]
            # Unlink while still holding the lock (see the module docstring for why this is safe).
            with contextlib.suppress(OSError):
                os.unlink(self._key / LOCK_NAME)
            fcntl.flock(entry[0], fcntl.LOCK_UN)
            os.close(entry[0])
        self._key = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def lock_folder(folder: str | Path, what: str = "output folder") -> FolderLock:
    """`with lock_folder(out): ...` — the exclusive lock of `out` for the block's duration."""
    return FolderLock(folder, what)
