"""Writing cache files: the HDF5 layout of split groups, root attributes and skipped lists.

Nothing is ever modified in place: a cache (or a part of an unfinished one)
is written through :func:`atomic_h5`, under a temporary name in the same
folder, and renamed over its final name once it is complete and on disk
(:mod:`tlkit.atomic`). A reader therefore sees the old file or the new one,
never a torn one, and ``kill -9`` at any moment leaves at worst a stray
temporary file that the next run removes.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from tlkit import atomic
from tlkit.cache.reader import H5_LOCKING
from tlkit.cache.schema import CHUNK_ROWS, FEATURE_DIM, SKIPPED_GROUP, STR_DTYPE, VIEWS_DATASET


# The HDF5 1.10 file format: its object headers, superblock and chunk indexes carry
# checksums, so a flipped byte in the file's structure is detected instead of silently
# redirecting a read. Readable by any HDF5 since 1.10 (2017); capped there so older-but-
# current readers keep working even when the writing library is newer.
H5_LIBVER = ("v110", "v110")


def atomic_h5(path: Path):
    """:func:`tlkit.atomic.atomic_h5` in the cache's HDF5 file format and locking mode:
    ``with atomic_h5(path) as f:`` writes a cache-shaped file that appears whole or not at all."""
    return atomic.atomic_h5(path, locking=H5_LOCKING, libver=H5_LIBVER)


def create_split(parent: h5py.Group, split: str, n_rows: int, views: int = 0, dim: int = FEATURE_DIM) -> h5py.Group:
    """Create an empty ``/<split>`` group of ``n_rows`` rows of ``dim`` features, chunked and checksummed (``views``
    K > 0: with ``/<split>/views`` of K views per row, in chunks of about the features' bytes)."""
    group = parent.create_group(split)
    # CHUNK_ROWS rows of 512 floats, or as many rows of a wider or narrower backbone in about the same 512 KiB
    chunk = max(1, min(CHUNK_ROWS * FEATURE_DIM // max(dim, 1) or 1, n_rows))
    group.create_dataset(
        "features", shape=(n_rows, dim), maxshape=(None, dim), dtype=np.float32,
        chunks=(chunk, dim), fletcher32=True,
    )
    if views:
        group.create_dataset(
            VIEWS_DATASET, shape=(n_rows, views, dim), maxshape=(None, views, dim), dtype=np.float32,
            chunks=(max(1, min(chunk // views, n_rows)), views, dim), fletcher32=True,
        )
    group.create_dataset("labels", shape=(n_rows,), maxshape=(None,), dtype=np.int64, chunks=(max(1, min(n_rows, 65536)),), fletcher32=True)
    group.create_dataset("paths", shape=(n_rows,), maxshape=(None,), dtype=STR_DTYPE, chunks=(max(1, min(n_rows, 16384)),))  # HDF5 cannot checksum variable-length strings
    return group


def write_split(parent: h5py.Group, split: str, features: np.ndarray, labels, paths, views=None) -> None:
    """Write a whole split that fits in memory (parts, small caches, tests); ``views`` (N, K, dim) or None."""
    features = np.asarray(features, dtype=np.float32)
    dim = features.shape[1] if features.ndim == 2 and len(paths) else FEATURE_DIM
    group = create_split(parent, split, len(paths), 0 if views is None else np.shape(views)[1], dim)
    if len(paths):
        if views is not None:
            group[VIEWS_DATASET][...] = np.asarray(views, dtype=np.float32)
        group["features"][...] = features
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
