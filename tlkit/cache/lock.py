"""One writer per cache: an advisory lock on ``<cache>.lock``.

The lock is an ``fcntl.flock`` held for the life of the writing process, so
the kernel releases it when that process ends for any reason, ``kill -9``
included; a stale lock file left behind means nothing. Readers never take it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tlkit.errors import CacheBusy, CacheError


class CacheLock:
    def __init__(self, cache_path: Path):
        self.path = Path(cache_path).with_name(Path(cache_path).name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> "CacheLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CacheError(f"cannot write next to the cache ({self.path}): {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise CacheBusy(
                f"{self.path.with_suffix('')} is being written by {holder}; wait for it to finish "
                f"(a lock held by a process that died is released automatically)"
            ) from None
        except OSError as exc:  # e.g. ENOLCK on a network filesystem without lock support
            os.close(fd)
            raise CacheError(f"cannot lock {self.path}: {exc.strerror} (see README: network filesystems)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "CacheLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
