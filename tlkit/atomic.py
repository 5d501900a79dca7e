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
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


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
    try:
        yield tmp
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
    """
    import h5py

    path = Path(path)
    tmp = tmp_name(path)
    try:
        with h5py.File(tmp, "w", **h5_options) as f:
            yield f
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(path.parent)


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
