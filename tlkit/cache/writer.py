"""Writing cache files: split groups, root attributes, and atomic publication.

Nothing is ever modified in place: a cache (or a part of an unfinished one)
is written under a temporary name in the same folder and renamed over its
final name once it is complete and on disk. A reader therefore sees the old
file or the new one, never a torn one, and ``kill -9`` at any moment leaves
at worst a stray temporary file that the next run removes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from tlkit import atomic
from tlkit.cache.reader import H5_LOCKING
from tlkit.cache.schema import CHUNK_ROWS, FEATURE_DIM, SKIPPED_GROUP, STR_DTYPE


# The HDF5 1.10 file format: its object headers, superblock and chunk indexes carry
# checksums, so a flipped byte in the file's structure is detected instead of silently
# redirecting a read. Readable by any HDF5 since 1.10 (2017); capped there so older-but-
# current readers keep working even when the writing library is newer.
H5_LIBVER = ("v110", "v110")


def tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_stale_tmp(path: Path) -> None:
    """Remove temporary files (and discarded folders) a killed writer left beside ``path`` (call under the lock)."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                stale.unlink()


def discard_dir(folder: Path, beside: Path) -> None:
    """Delete ``folder`` so that it disappears at once, not file by file.

    It is first renamed to a temporary name beside ``beside`` (the cache): a
    kill during the slow delete then leaves a stale temporary folder, which
    :func:`remove_stale_tmp` removes, never a half-emptied ``folder`` that a
    later run or ``tlkit info`` would take for work in progress.
    """
    trash = beside.with_name(f".{beside.name}.tmp-{os.getpid()}-{folder.name}")
    try:
        os.replace(folder, trash)
    except FileNotFoundError:
        return
    _fsync_dir(beside.parent)
    shutil.rmtree(trash, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file that readers see whole or not at all."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_h5(path: Path):
    """Yield an open, writable ``h5py.File`` that appears at ``path`` only on success."""
    return atomic.atomic_h5(path, locking=H5_LOCKING, libver=H5_LIBVER)  # its failures never crash the interpreter


def create_split(parent: h5py.Group, split: str, n_rows: int) -> h5py.Group:
    """Create an empty ``/<split>`` group of ``n_rows`` rows, chunked and checksummed."""
    group = parent.create_group(split)
    chunk = max(1, min(CHUNK_ROWS, n_rows))
    group.create_dataset(
        "features", shape=(n_rows, FEATURE_DIM), maxshape=(None, FEATURE_DIM), dtype=np.float32,
        chunks=(chunk, FEATURE_DIM), fletcher32=True,
    )
    group.create_dataset("labels", shape=(n_rows,), maxshape=(None,), dtype=np.int64, chunks=(max(1, min(n_rows, 65536)),), fletcher32=True)
    group.create_dataset("paths", shape=(n_rows,), maxshape=(None,), dtype=STR_DTYPE, chunks=(max(1, min(n_rows, 16384)),))  # HDF5 cannot checksum variable-length strings
    return group


def write_split(parent: h5py.Group, split: str, features: np.ndarray, labels, paths) -> None:
    """Write a whole split that fits in memory (parts, small caches, tests)."""
    group = create_split(parent, split, len(paths))
    if len(paths):
        group["features"][...] = np.asarray(features, dtype=np.float32)
        group["labels"][...] = np.asarray(labels, dtype=np.int64)
        group["paths"][...] = np.asarray(list(paths), dtype=object)


def write_skipped(f: h5py.File, entries: list[tuple[str, str, str]]) -> None:
    """``entries`` are (path, split, reason) of files that could not be decoded."""
    group = f.create_group(SKIPPED_GROUP)
    for i, name in enumerate(("paths", "splits", "reasons")):
        group.create_dataset(name, data=np.array([e[i] for e in entries], dtype=object), dtype=STR_DTYPE)


def write_root_attrs(f: h5py.File, **attrs) -> None:
    for key, value in attrs.items():
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            f.attrs.create(key, np.array(list(value), dtype=object), dtype=STR_DTYPE)
        else:
            f.attrs[key] = value
