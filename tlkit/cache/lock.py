"""One writer per cache: an advisory lock on ``<cache>.lock``.

The lock is an ``fcntl.flock`` held for the life of the writing process, so
the kernel releases it when that process ends for any reason, ``kill -9``
included; a stale lock file left behind means nothing. Readers never take it.

Only the writing process may hold it. An flock belongs to the open file,
and a forked child shares the parent's open files: a decoding worker that
outlived a killed writer used to keep the cache locked, so the same command
run at once was refused. Hence the lock's descriptor is ``O_CLOEXEC`` (gone
in any program a child execs) and closed in every forked child right after
``fork`` (:func:`_close_in_child`, registered with ``os.register_at_fork``:
it covers torch's and multiprocessing's forks, whoever starts them). Closing
a shared descriptor in the child leaves the parent's lock in place; the
child must never *unlock* it, which would release the parent's lock too.
The alternatives do not fit: ``F_OFD_SETLK`` locks are just as shared by a
fork; POSIX ``F_SETLK`` locks are not inherited, but any ``close`` of the
lock file in the writer (reading it to name the holder) drops them; and
spawn/forkserver workers re-import torch, seconds per worker.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tlkit.errors import CacheBusy, CacheError

_held: set["CacheLock"] = set()  # the locks this process holds (until released, even if dropped unreleased)


def _close_in_child() -> None:
    for lock in list(_held):
        fd, lock._fd = lock._fd, None  # forget it first: the child must never unlock the parent's lock
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class CacheLock:
    def __init__(self, cache_path: Path):
        self.path = Path(cache_path).with_name(Path(cache_path).name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> "CacheLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise CacheError(f"cannot write next to the cache ({self.path}): {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            recorded = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise CacheBusy(_busy_message(self.path, recorded)) from None
        except OSError as exc:  # e.g. ENOLCK on a network filesystem without lock support
            os.close(fd)
            raise CacheError(f"cannot lock {self.path}: {exc.strerror} (see docs/cache-format.md: network filesystems)") from None
        try:  # who writes, for the message of a second writer; the lock itself holds without it
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}".encode())
        except OSError:  # a full disk: _busy_message then looks the holder up in /proc
            pass
        self._fd = fd
        _held.add(self)
        return self

    def release(self) -> None:
        _held.discard(self)
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "CacheLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _busy_message(path: Path, recorded: str) -> str:
    """Who holds the lock, as the kernel sees it now (not only the PID the writer recorded)."""
    cache = path.with_suffix("")
    pid = int(recorded.split()[-1]) if recorded.startswith("pid ") and recorded.split()[-1].isdigit() else None
    if pid is not None and _alive(pid):
        return (f"{cache} is being written by pid {pid}; wait for it to finish, or stop it "
                f"(the lock is released the moment that process exits)")
    holders = _processes_holding(path)
    if holders:
        who = ", ".join(f"pid {p}" for p in holders)
        origin = f" (left over from pid {pid}, which has exited)" if pid is not None else ""
        they, them = ("they exit", "them") if len(holders) > 1 else ("it exits", "it")
        return f"{cache} is locked by {who}{origin}; the lock is released when {they}: stop {them}, or wait"
    return f"{cache} is locked by another process; wait for it to finish"


def _processes_holding(path: Path) -> list[int]:
    """PIDs of the processes with ``path`` open (Linux ``/proc``; an empty list elsewhere)."""
    try:
        st = os.stat(path)
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    found = []
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or not ours to look at
            continue
        for fd in fds:
            try:
                target = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (target.st_dev, target.st_ino) == (st.st_dev, st.st_ino):
                found.append(pid)
                break
    return sorted(found)


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
