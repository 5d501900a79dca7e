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
            raise CacheError(f"cannot lock {self.path}: {exc.strerror} (see docs/cache-format.md: network filesystems)") from None
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


def lock_path(cache_path: Path) -> Path:
    return Path(cache_path).with_name(Path(cache_path).name + ".lock")


def lock_holder(cache_path: Path) -> int | None:
    """PID of the process writing ``cache_path`` now, or None.

    Looks the lock up in ``/proc/locks`` (Linux) instead of trying to take
    it: even a brief probe could make a writer that starts at that moment
    fail with "being written by". Elsewhere, falls back to the PID recorded
    in the lock file and whether that process is alive.
    """
    path = lock_path(cache_path)
    try:
        st = os.stat(path)
        recorded = path.read_text(errors="replace").strip()
    except OSError:
        return None
    pid_in_file = int(recorded.split()[-1]) if recorded.startswith("pid ") and recorded.split()[-1].isdigit() else None
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return pid_in_file if pid_in_file and _alive(pid_in_file) else None
    for line in table.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 5287 fe:00:2146467 0 EOF"; waiting requests carry "->" and are skipped
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or fields[3] != "WRITE":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            pid, same_dev = int(fields[4]), (int(major, 16), int(minor, 16)) == (os.major(st.st_dev), os.minor(st.st_dev))
        except ValueError:
            continue
        # overlay filesystems may report another device number: then the PID must match the file's
        if int(inode) == st.st_ino and (same_dev or pid == pid_in_file):
            return pid
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
