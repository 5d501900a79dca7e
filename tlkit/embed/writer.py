"""Writer: buffer feature rows and write them as atomic part files.

An embed in progress keeps its finished work in ``<cache>.parts/``: every
part file is a small cache-shaped HDF5 file that appears under its final
name only once it is complete (see :mod:`tlkit.cache.writer`), so an
interrupted run loses at most the rows still in this buffer.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tlkit.cache.parts import LOCAL_PREFIX, next_seq, part_name
from tlkit.cache.schema import PART_FORMAT, SCHEMA_VERSION
from tlkit.cache.writer import atomic_h5, write_root_attrs, write_skipped, write_split
from tlkit.splits import ordered_splits


class PartWriter:
    """Collects rows and skipped files; flushes a part every ``rows_per_part`` rows or ``flush_seconds``."""

    def __init__(
        self,
        parts_dir: Path,
        class_names: list[str],
        prefix: str = LOCAL_PREFIX,
        rows_per_part: int = 2048,
        flush_seconds: float = 30.0,
    ):
        self.parts_dir = Path(parts_dir)
        self.class_names = list(class_names)
        self.prefix = prefix
        self.rows_per_part = rows_per_part
        self.flush_seconds = flush_seconds
        self._features: list[np.ndarray] = []
        self._labels: list[int] = []
        self._paths: list[str] = []
        self._splits: list[str] = []
        self._views: list[np.ndarray | None] = []  # per row: its (K, dim) views, or None
        self._skipped: list[tuple[str, str, str]] = []
        self._last_flush = time.monotonic()
        self._seq = next_seq(self.parts_dir, prefix)

    def add(self, features: np.ndarray, labels, paths, splits, views=None) -> None:
        """``views``: per row, its (K, dim) views or None (None for all: no views)."""
        self._views.extend(views if views is not None else [None] * len(paths))
        self._features.append(np.asarray(features, dtype=np.float32))
        self._labels.extend(int(v) for v in labels)
        self._paths.extend(paths)
        self._splits.extend(splits)
        if len(self._paths) >= self.rows_per_part or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def add_skipped(self, path: str, split: str, reason: str) -> None:
        self._skipped.append((path, split, reason))

    def flush(self) -> None:
        if not self._paths and not self._skipped:
            return
        features = np.concatenate(self._features) if self._features else np.empty((0, 0), np.float32)
        labels = np.asarray(self._labels, dtype=np.int64)
        paths = np.asarray(self._paths, dtype=object)
        splits = np.asarray(self._splits, dtype=object)
        present = ordered_splits(self._splits)
        target = self.parts_dir / part_name(self.prefix, self._seq)
        with atomic_h5(target) as f:
            write_root_attrs(
                f, format=PART_FORMAT, schema_version=SCHEMA_VERSION, complete=True,
                splits=present, class_names=self.class_names,
            )
            for split in present:
                rows = splits == split
                write_split(f, split, features[rows], labels[rows], paths[rows].tolist(),
                            views=_stack_views([v for v, keep in zip(self._views, rows) if keep]))
            write_skipped(f, self._skipped)
        self._seq += 1
        self._features, self._labels, self._paths, self._splits, self._skipped = [], [], [], [], []
        self._views = []
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()


def _stack_views(views: list) -> np.ndarray | None:
    """One split's rows of views as (N, K, dim); None when its rows have none (a split has views for all or none)."""
    if not views or all(v is None for v in views):
        return None
    return np.stack([np.asarray(v, dtype=np.float32) for v in views])
