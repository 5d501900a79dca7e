"""Safe file writes, in one place: "write a temporary file, fsync, rename".

Every file tlkit writes (caches, part files, run folders, checkpoints,
reports, figures, predictions) goes through this module, so that a reader,
or a run killed at any moment, sees the old file or the new one, never a
torn one. A temporary file is named ``.<name>.tmp-<pid>[tag]`` beside its
target (a rename is only atomic within one filesystem), and a killed writer's
leftovers are removed by :func:`remove_stale_tmp` on the next run.

    atomic_bytes(path, data)        atomic_text(path, text)      atomic_json(path, obj)
    with atomic_path(path) as tmp:  ...write to tmp by name (savefig, torch.save, np.save)...
    with atomic_h5(path) as f:      ...an open h5py.File...
    replace_dir(staging, target)    discard_dir(folder, beside)  fsync_dir(folder)

A full disk (and the other ways a write fails for reasons outside tlkit:
a quota, a file-size limit, an I/O error, a read-only mount) becomes one
:class:`StorageError` naming the mount, what was being written and, where
known, how much space it needs and how much is free:

    require_free_space(path, nbytes, what)   refuse early, before a big write (checkpoints, publish, merge)
    with storage_errors(path, what): ...      translate errors raised inside
    storage_error(exc)                        the translation itself (the CLI's last resort)

The helpers above translate their own failures, and leave no temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from tlkit.errors import TlkitError

# What each errno means for the user, in the words of the one-line error.
_STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on",
    errno.EDQUOT: "disk quota exceeded on",
    errno.EFBIG: "file too large for",
    errno.EIO: "input/output error on",
    errno.EROFS: "read-only filesystem",
}
# HDF5 reports a failed write inside its message text ("..., errno = 28, error message = ...").
_H5_ERRNO = re.compile(r"errno = (\d+)")
# torch.save given a path writes through its own C++ stream, and a failed write says only that it came up
# short: "[enforce fail at inline_container.cc:672] . unexpected pos 1601664 vs 1601560", no errno.
_TORCH_SHORT_WRITE = re.compile(r"inline_container\.cc.*unexpected pos")
_NEARLY_FULL = 2**20  # bytes: a filesystem with less free space than this after a short write was full
_H5_FILENAME = re.compile(r"filename = '([^']*)'")


class StorageError(TlkitError, OSError):
    """A write failed for a reason outside tlkit (disk full, quota, read-only, I/O error); one line.

    Still an ``OSError`` with its ``errno``, so code that handles OS errors keeps handling it.
    """

    def __init__(self, code: int, message: str, filename: str | None = None, need: int | None = None):
        super().__init__(code, message, filename)
        self.message = message
        self.need = need  # bytes the failed write needed, when known

    def __str__(self) -> str:
        return self.message


def _size(nbytes: float) -> str:
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.1f} GiB"
    if nbytes >= 2**20:
        return f"{nbytes / 2**20:.0f} MiB"
    return f"{max(nbytes, 0) / 2**10:.0f} KiB"


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _mount_of(path: Path) -> Path:
    path = _existing(path)
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(_existing(path)).free
    except OSError:
        return None


def _storage_message(code: int, path: Path, what: str, need: int | None) -> str:
    words = _STORAGE_ERRNOS[code]
    free = _free_bytes(path) if code in (errno.ENOSPC, errno.EFBIG) else None
    if need and free is not None and need <= free:
        need = None  # the estimate was short of what the write took: do not claim it would have fit
    detail = f"need about {_size(need)} to {what}" if need else f"while trying to {what}"
    if free is not None:
        detail += f"; {_size(free)} free"
    return f"{words} {_mount_of(path)} ({detail})"


def _errno_of(exc: BaseException | None, depth: int = 0) -> int | None:
    if exc is None or depth > 4:
        return None
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        return exc.errno
    if isinstance(exc, (OSError, RuntimeError)):  # h5py: the C library's errno is only in the text
        found = _H5_ERRNO.search(str(exc))
        if found and int(found.group(1)) in _STORAGE_ERRNOS:
            return int(found.group(1))
    if isinstance(exc, RuntimeError):  # torch.save reports a failed write as "unexpected pos", the OSError inside
        return _errno_of(exc.__cause__ or exc.__context__, depth + 1)
    return None


def _short_write_on_full_disk(exc: BaseException, path: Path) -> bool:
    """torch's zip writer failed without an errno (it was given a path), and ``path``'s filesystem is full.

    (tlkit's own checkpoints go through a Python file, whose OSError torch keeps; this covers the rest.)
    """
    if not (isinstance(exc, RuntimeError) and _TORCH_SHORT_WRITE.search(str(exc))):
        return False
    free = _free_bytes(path)
    return free is not None and free < _NEARLY_FULL


def storage_error(exc: BaseException, path: str | os.PathLike | None = None, what: str | None = None,
                  need: int | None = None) -> StorageError | None:
    """``exc`` as a one-line :class:`StorageError` if it is a storage failure, else None.

    ``path`` is what was being written (default: the file named by the error),
    ``what`` says why ("publish cache/feats.h5"), ``need`` how many bytes it needs.
    """
    if isinstance(exc, StorageError) and (exc.need is not None or what is None):
        return exc  # already says what it needs (a refusal before writing), or nothing more is known here
    code = _errno_of(exc)
    if code is None and path is not None and _short_write_on_full_disk(exc, Path(path)):
        code = errno.ENOSPC
    if code is None:
        return None
    if path is None:
        path = getattr(exc, "filename", None) or (_H5_FILENAME.search(str(exc)) or [None, None])[1]
        if not path:  # nothing says which file: say only what happened
            return StorageError(code, f"{os.strerror(code).lower()} while writing", None, need)
    path = Path(path)
    return StorageError(code, _storage_message(code, path, what or f"write {path}", need), str(path), need)


def require_free_space(path: str | os.PathLike, nbytes: int, what: str) -> None:
    """Refuse with a :class:`StorageError` now, before writing, if ``path``'s filesystem lacks ``nbytes``."""
    free = _free_bytes(Path(path))
    if free is not None and nbytes > free:
        raise StorageError(errno.ENOSPC, _storage_message(errno.ENOSPC, Path(path), what, nbytes), str(path), nbytes)


@contextlib.contextmanager
def storage_errors(path: str | os.PathLike, what: str, need: int | None = None) -> Iterator[None]:
    """Turn storage failures raised inside the block into one-line :class:`StorageError`s about ``path``.

    Nested, the outermost wins: it knows best what the user asked for ("publish
    cache/feats.h5" rather than "write cache/.feats.h5.tmp-123"), and it reads the
    free space after the inner helpers removed their temporary files.
    """
    try:
        yield
    except (OSError, RuntimeError) as exc:
        translated = storage_error(exc, path, what, need)
        if translated is None:
            raise
        raise translated from None


def tmp_name(path: str | os.PathLike, tag: str = "") -> Path:
    """The temporary name beside ``path`` that this process writes before renaming.

    ``tag`` ends the name (``atomic_path`` passes the suffix, so a format read from it stays right).
    """
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{tag}")


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside ``folder`` durable (best effort: some filesystems cannot fsync a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write by name; it replaces ``path`` only if the block succeeds.

    The temporary name keeps ``path``'s suffix, so writers that pick a format from it
    (matplotlib's ``savefig``) write the right one. On any error, the temporary file is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = tmp_name(path, path.suffix)
    with _replacing(path, tmp):
        yield tmp


@contextlib.contextmanager
def _replacing(path: Path, tmp: Path):
    """The block writes ``tmp``; then it is fsynced and renamed over ``path``, and the rename made durable.

    On any error ``tmp`` is removed and ``path`` is left as it was; a storage error becomes one line.
    """
    try:
        with storage_errors(path, f"write {path}"):
            yield
            _fsync_file(tmp)
            os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(path.parent)


def atomic_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the whole file or the previous one."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_text(path: str | os.PathLike, text: str) -> None:
    atomic_bytes(path, text.encode("utf-8"))


def atomic_json(path: str | os.PathLike, obj) -> None:
    """Indented JSON; numpy scalars and arrays and paths are written as plain JSON values."""
    atomic_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(value):
    import numpy as np

    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike, **h5_options):
    """Yield a writable ``h5py.File`` that appears at ``path`` only when the block succeeds.

    ``h5_options`` go to ``h5py.File`` (the cache passes its file-format version and locking).
    A write that fails (a full disk) raises :class:`StorageError` and never leaves HDF5
    objects behind that crash the interpreter later (see :class:`_H5Guard`).
    """
    import h5py

    path = Path(path)
    tmp = tmp_name(path)
    with _replacing(path, tmp), _H5Guard(tmp) as guard:
        # No chunk cache: each chunk is written by the call that fills it, where a full disk raises,
        # instead of when a dataset object is freed, where HDF5 cannot report it and leaves the file
        # in a state that crashes the interpreter (_H5Guard). tlkit writes thousands of rows per call:
        # a 160 MB merge ran no slower without the cache.
        f = h5py.File(tmp, "w", **{"rdcc_nbytes": 0, **h5_options})
        guard.watch(f)
        yield f
        f.flush()  # every pending write happens here, while a failure can still be undone
        guard.check()
        f.close()
        guard.check()


class _H5Guard:
    """Keeps a failed HDF5 write from crashing the interpreter.

    When a write fails, HDF5 still holds data it cannot write. Every later attempt
    fails too (closing the file, and freeing any of its objects: h5py prints "Can't
    decrement id ref count" for each), the objects stay half-open, and when they
    are finally freed, at exit at the latest, the process can die of a segmentation
    fault. Some of these failures happen where Python cannot raise them (an object
    freed by the garbage collector); ``sys.unraisablehook`` sees those.

    So at the first failure the file's descriptor is pointed at /dev/null: every
    later write succeeds into nothing, HDF5 can close the file and all of its
    objects, and the recorded failure is raised (the temporary file is removed).
    """

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.file = None
        self.fd: int | None = None
        self.error: BaseException | None = None

    def watch(self, f) -> None:
        self.file = f
        self.fd = f.id.get_vfd_handle() if f.driver == "sec2" else None

    def _discard_writes(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                null = os.open(os.devnull, os.O_RDWR)
                try:
                    os.dup2(null, self.fd)
                finally:
                    os.close(null)
            self.fd = None

    def _hook(self, unraisable) -> None:
        exc = unraisable.exc_value
        if exc is not None and str(self.tmp.name) in str(exc):  # a failure of our file, in a destructor
            if self.error is None:
                self.error = exc
            self._discard_writes()
            return
        self._previous_hook(unraisable)

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def __enter__(self) -> "_H5Guard":
        self._previous_hook = sys.unraisablehook
        sys.unraisablehook = self._hook
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and self.file is not None:
                self._discard_writes()
                with contextlib.suppress(Exception):
                    self.file.close()
        finally:
            sys.unraisablehook = self._previous_hook
        if exc_type is not None and issubclass(exc_type, Exception) and self.error is not None and exc is not self.error:
            # the first failure says what went wrong (later ones are only its echoes)
            raise self.error from None


def replace_dir(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename the finished folder ``staging`` to ``target`` in one step (``target`` must not exist)."""
    os.replace(staging, target)
    fsync_dir(Path(target).parent)


def discard_dir(folder: str | os.PathLike, beside: str | os.PathLike) -> None:
    """Delete ``folder`` so that it disappears at once, not file by file.

    It is first renamed to a temporary name beside ``beside``: a kill during the
    slow delete then leaves a stale temporary folder, which :func:`remove_stale_tmp`
    removes, never a half-emptied ``folder`` that a later run would take for work
    in progress.
    """
    folder = Path(folder)
    trash = tmp_name(beside, f"-{folder.name}")
    try:
        os.replace(folder, trash)
    except FileNotFoundError:
        return
    fsync_dir(Path(beside).parent)
    shutil.rmtree(trash, ignore_errors=True)


def remove_stale_tmp(path: str | os.PathLike) -> None:
    """Remove the temporary files and folders that killed writers left beside ``path``.

    Call it only while holding the lock that keeps other writers of ``path`` away.
    """
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        _unlink_quietly(stale)
