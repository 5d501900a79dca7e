"""Stitch rows from several cache-shaped HDF5 files into one finished cache.

Used wherever a cache is (re)built from pieces: publishing an embed (the old
cache plus the part files of this run), the Ray backend (one file per
shard) and ``tlkit merge``. Rows are de-duplicated by path (the first
source wins), sorted by path within each split, and their labels remapped
by class *name*, so sources with different class lists combine correctly.

Everything streams, so peak memory does not grow with the row count:
finished caches keep their paths sorted (see :mod:`tlkit.cache.schema`),
so a k-way merge of the sources' path blocks gives the output order and
the duplicates; features are then copied a block at a time. A source whose
paths are not sorted (a part file, written in arrival order) is sorted in
memory, which only costs memory in proportion to that one small source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from tlkit.atomic import require_free_space, storage_errors
from tlkit.cache.reader import (
    CONTENT_DIGEST_ATTR,
    H5_LOCKING,
    PATHS_DIGEST_ATTR,
    PathsDigest,
    class_names_of,
    content_digest,
    split_names,
    stored_digest,
)
from tlkit.cache.schema import FORMAT, SCHEMA_VERSION, VIEWS_DATASET
from tlkit.cache.writer import atomic_h5, create_split, write_root_attrs, write_skipped
from tlkit.errors import CacheError
from tlkit.splits import ordered_splits

COPY_ROWS = 4096  # rows gathered per write: 8 MiB of features
PATH_BLOCK = 16384  # paths read per step from each source (one chunk of the paths dataset)

Block = tuple[np.ndarray, np.ndarray]  # (paths as an object array of str, their row numbers in the source)


def _path_blocks(group: h5py.Group) -> Iterator[np.ndarray]:
    ds = group["paths"]
    for start in range(0, len(ds), PATH_BLOCK):
        yield ds.asstr()[start:start + PATH_BLOCK]


def _is_sorted(group: h5py.Group) -> bool:
    """Whether the split's paths are in non-decreasing order (read a block at a time).

    Checks them against their recorded digest on the way, so a damaged source
    never passes its paths on.
    """
    last, ordered = None, True
    digest = PathsDigest()
    for paths in _path_blocks(group):
        if len(paths) == 0:
            continue
        digest.update(paths)
        if (last is not None and paths[0] < last) or not np.all(paths[1:] >= paths[:-1]):
            ordered = False
        last = paths[-1]
    stored = stored_digest(group["paths"])
    if stored is not None and stored != digest.hexdigest():
        raise CacheError(f"{group.file.filename} is damaged: the paths of split {group.name.strip('/')!r} "
                         f"do not match their sha256 digest; check it with `tlkit verify`")
    return ordered


def _sorted_blocks(group: h5py.Group) -> Iterator[Block]:
    """The split's (path, row) pairs in path order, in blocks."""
    if _is_sorted(group):
        start = 0
        for paths in _path_blocks(group):
            yield paths, np.arange(start, start + len(paths), dtype=np.int64)
            start += len(paths)
    else:
        paths = np.concatenate(list(_path_blocks(group))) if len(group["paths"]) else np.array([], dtype=object)
        order = np.argsort(paths, kind="stable")  # stable: of equal paths the first row wins
        yield paths[order], order.astype(np.int64)


def _merge_sorted(streams: Sequence[Iterator[Block]]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """k-way merge of path-sorted streams: (paths, source, row) blocks, in path order, each path once.

    Each round takes, from every source, the rows up to the smallest of the
    sources' current block ends: every row with such a path is then in hand,
    so the round can be sorted on its own. The sort is stable over sources
    listed in order, so of equal paths the earliest source wins.
    """
    buffers: list[Block | None] = [None] * len(streams)
    done = [False] * len(streams)
    last = None
    while True:
        for s, stream in enumerate(streams):
            while not done[s] and (buffers[s] is None or len(buffers[s][0]) == 0):
                nxt = next(stream, None)
                if nxt is None:
                    done[s] = True
                else:
                    buffers[s] = nxt
        active = [s for s in range(len(streams)) if buffers[s] is not None and len(buffers[s][0])]
        if not active:
            return
        bound = min(buffers[s][0][-1] for s in active)
        paths, sources, rows = [], [], []
        for s in active:
            block_paths, block_rows = buffers[s]
            n = int(np.searchsorted(block_paths, bound, side="right"))
            paths.append(block_paths[:n])
            rows.append(block_rows[:n])
            sources.append(np.full(n, s, dtype=np.int64))
            buffers[s] = (block_paths[n:], block_rows[n:])
        paths, sources, rows = np.concatenate(paths), np.concatenate(sources), np.concatenate(rows)
        order = np.argsort(paths, kind="stable")
        paths, sources, rows = paths[order], sources[order], rows[order]
        keep = np.ones(len(paths), dtype=bool)
        keep[1:] = paths[1:] != paths[:-1]
        if last is not None and paths[0] == last:
            keep[0] = False
        last = paths[-1]
        yield paths[keep], sources[keep], rows[keep]


def _rechunk(blocks: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]], size: int):
    """Regroup (paths, source, row) blocks into blocks of exactly ``size`` rows (the last may be short)."""
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    held = 0
    for block in blocks:
        pending.append(block)
        held += len(block[0])
        while held >= size:
            merged = [np.concatenate(col) for col in zip(*pending)]
            yield tuple(col[:size] for col in merged)
            pending = [tuple(col[size:] for col in merged)]
            held -= size
    if held:
        yield tuple(np.concatenate(col) for col in zip(*pending))


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


def _output_bytes(files: Sequence[h5py.File]) -> int:
    """About the size of the output: the sources' stored feature and label bytes, plus their paths.

    Duplicates make it an overestimate. Variable-length paths live in HDF5's
    heap, which ``get_storage_size`` does not count: 64 bytes per row stands for
    them, and 64 KiB for the file's own structure and attributes.
    """
    total = 64 * 1024
    for f in files:
        for split in split_names(f):
            group = f[split]
            total += sum(group[name].id.get_storage_size() for name in ("features", "labels", VIEWS_DATASET) if name in group)
            total += 64 * len(group["paths"])
    return total


def _views_per_row(files: Sequence[h5py.File], holders: list[int], split: str) -> int:
    """K of the split's ``views`` in every source (0: none); sources that disagree never combine."""
    ks = {files[s][split][VIEWS_DATASET].shape[1] if VIEWS_DATASET in files[s][split] else 0 for s in holders}
    if len(ks) > 1:
        raise CacheError(f"the sources of split {split!r} hold different numbers of views per image ({sorted(ks)}); "
                         f"caches with different --views never mix")
    return ks.pop() if ks else 0


def assemble(
    out_path: Path,
    sources: Sequence[Path],
    class_names: Sequence[str],
    attrs: dict,
    skipped: Sequence[tuple[str, str, str]] = (),
    on_rows: Callable[[int], None] | None = None,
    purpose: str | None = None,
) -> dict[str, int]:
    """Write the union of ``sources`` to ``out_path`` atomically; return rows per split.

    ``skipped`` entries (path, split, reason) whose path has a row in the
    output are dropped: an image that one source could not decode and another
    embedded is not skipped. ``purpose`` ("publish cache/feats.h5") is what a
    lack of space is reported as keeping from happening.
    """
    label_of = {name: i for i, name in enumerate(class_names)}
    files = [h5py.File(p, "r", locking=H5_LOCKING) for p in sources]
    try:
        # The output is a full copy written beside the old file: refuse now rather than fail part-way.
        need, purpose = _output_bytes(files), purpose or f"write {out_path}"
        require_free_space(out_path, need, purpose)
        remaps = []
        for p, f in zip(sources, files):
            names = class_names_of(f)
            missing = [n for n in names if n not in label_of]
            if missing:
                raise ValueError(f"{p} has classes {missing} that are not in the output's class list")
            remaps.append(np.array([label_of[n] for n in names], dtype=np.int64))
        splits = ordered_splits(s for f in files for s in split_names(f))
        skipped_paths = {e[0] for e in skipped}
        embedded_skipped: set[str] = set()
        counts: dict[str, int] = {}
        with storage_errors(out_path, purpose, need), atomic_h5(out_path) as out:
            write_root_attrs(
                out, format=FORMAT, schema_version=SCHEMA_VERSION, complete=False,
                splits=splits, class_names=list(class_names), **attrs,
            )
            for split in splits:
                holders = [s for s, f in enumerate(files) if split in f]
                upper = sum(len(files[s][split]["paths"]) for s in holders)  # before de-duplication
                views = _views_per_row(files, holders, split)
                group = create_split(out, split, upper, views, _width(files[s][split] for s in holders))
                streams = [_sorted_blocks(files[s][split]) for s in holders]
                written = PathsDigest()
                start = 0
                for paths, which, row in _rechunk(_merge_sorted(streams), COPY_ROWS):
                    src = np.asarray(holders, dtype=np.int64)[which]
                    stop = start + len(paths)
                    feats = np.empty((stop - start, group["features"].shape[1]), dtype=np.float32)
                    labels = np.empty(stop - start, dtype=np.int64)
                    for s in np.unique(src):
                        mask = src == s
                        g = files[s][split]
                        feats[mask] = _gather(g["features"], row[mask])
                        labels[mask] = remaps[s][_gather(g["labels"], row[mask])]
                    if views:  # in its own pass: a block of views is K times a block of features
                        block = np.empty((stop - start, views, feats.shape[1]), dtype=np.float32)
                        for s in np.unique(src):
                            mask = src == s
                            block[mask] = _gather(files[s][split][VIEWS_DATASET], row[mask])
                        group[VIEWS_DATASET][start:stop] = block
                    group["features"][start:stop] = feats
                    group["labels"][start:stop] = labels
                    group["paths"][start:stop] = paths
                    written.update(paths)
                    if skipped_paths:
                        embedded_skipped.update(p for p in paths.tolist() if p in skipped_paths)
                    if on_rows:
                        on_rows(stop - start)
                    start = stop
                if start < upper:  # duplicates were dropped
                    for name in ("features", "labels", "paths", *([VIEWS_DATASET] if views else [])):
                        group[name].resize(start, axis=0)
                group["paths"].attrs[PATHS_DIGEST_ATTR] = written.hexdigest()  # UTF-8 text, like every string attribute
                counts[split] = start
            write_skipped(out, [e for e in skipped if e[0] not in embedded_skipped])
            out.attrs["complete"] = True
            out.attrs[CONTENT_DIGEST_ATTR] = content_digest(out)  # last write before the atomic rename
        return counts
    finally:
        for f in files:
            f.close()


def _width(groups) -> int:
    """The feature width of the sources' split (any backbone's); equal in all of them (the provenance checked that)."""
    groups = list(groups)
    widths = {int(g["features"].shape[1]) for g in groups if len(g["features"])}
    if len(widths) > 1:
        raise CacheError(f"the sources hold features of different widths {sorted(widths)}: not one feature space")
    return widths.pop() if widths else int(groups[0]["features"].shape[1])
