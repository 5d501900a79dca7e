"""Stitch rows from several cache-shaped HDF5 files into one finished cache.

Used wherever a cache is (re)built from pieces: publishing an embed (the old
cache plus the part files of this run), the Ray backend (one file per
shard) and ``tlkit merge``. Rows are de-duplicated by path (the first
source wins), sorted by path within each split, and their labels remapped
by class *name*, so sources with different class lists combine correctly.
Features are copied in chunks: peak memory does not grow with the row count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from tlkit.cache.reader import class_names_of, read_paths, split_names
from tlkit.cache.schema import FORMAT, SCHEMA_VERSION
from tlkit.cache.writer import atomic_h5, create_split, write_root_attrs, write_skipped
from tlkit.data.discovery import ALL_SPLIT, SPLIT_NAMES

COPY_ROWS = 4096  # rows gathered per write: 8 MiB of features


@dataclass
class _Rows:
    """Which (source, row) lands at each output row of one split, in output order."""

    paths: list[str]
    source: np.ndarray
    row: np.ndarray


def _plan_split(files: Sequence[h5py.File], split: str) -> _Rows:
    seen: dict[str, tuple[int, int]] = {}
    for s, f in enumerate(files):
        if split not in f:
            continue
        for r, p in enumerate(read_paths(f[split]).tolist()):
            seen.setdefault(p, (s, r))
    order = sorted(seen)
    return _Rows(
        paths=order,
        source=np.array([seen[p][0] for p in order], dtype=np.int64),
        row=np.array([seen[p][1] for p in order], dtype=np.int64),
    )


def _gather(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """``ds[rows]`` for any order of rows, reading a contiguous span when that is cheaper."""
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    lo, hi = int(sorted_rows[0]), int(sorted_rows[-1]) + 1
    if hi - lo <= 4 * len(rows):
        block = ds[lo:hi][sorted_rows - lo]
    else:
        block = ds[np.unique(sorted_rows)]
        block = block[np.searchsorted(np.unique(sorted_rows), sorted_rows)]
    out = np.empty_like(block)
    out[order] = block
    return out


def assemble(
    out_path: Path,
    sources: Sequence[Path],
    class_names: Sequence[str],
    attrs: dict,
    skipped: Sequence[tuple[str, str, str]] = (),
    on_rows: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Write the union of ``sources`` to ``out_path`` atomically; return rows per split."""
    label_of = {name: i for i, name in enumerate(class_names)}
    files = [h5py.File(p, "r") for p in sources]
    try:
        remaps = []
        for p, f in zip(sources, files):
            names = class_names_of(f)
            missing = [n for n in names if n not in label_of]
            if missing:
                raise ValueError(f"{p} has classes {missing} that are not in the output's class list")
            remaps.append(np.array([label_of[n] for n in names], dtype=np.int64))
        present = {s for f in files for s in split_names(f)}
        splits = [s for s in (*SPLIT_NAMES, ALL_SPLIT) if s in present]
        counts: dict[str, int] = {}
        with atomic_h5(out_path) as out:
            write_root_attrs(
                out, format=FORMAT, schema_version=SCHEMA_VERSION, complete=False,
                splits=splits, class_names=list(class_names), **attrs,
            )
            for split in splits:
                plan = _plan_split(files, split)
                group = create_split(out, split, len(plan.paths))
                for start in range(0, len(plan.paths), COPY_ROWS):
                    stop = min(start + COPY_ROWS, len(plan.paths))
                    src, row = plan.source[start:stop], plan.row[start:stop]
                    feats = np.empty((stop - start, group["features"].shape[1]), dtype=np.float32)
                    labels = np.empty(stop - start, dtype=np.int64)
                    for s in np.unique(src):
                        mask = src == s
                        g = files[s][split]
                        feats[mask] = _gather(g["features"], row[mask])
                        labels[mask] = remaps[s][_gather(g["labels"], row[mask])]
                    group["features"][start:stop] = feats
                    group["labels"][start:stop] = labels
                    group["paths"][start:stop] = np.array(plan.paths[start:stop], dtype=object)
                    if on_rows:
                        on_rows(stop - start)
                counts[split] = len(plan.paths)
            write_skipped(out, list(skipped))
            out.attrs["complete"] = True  # last write before the atomic rename
        return counts
    finally:
        for f in files:
            f.close()
