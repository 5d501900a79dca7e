"""Is a cache intact, and does it still match its backbone? (``tlkit verify``)

Two kinds of check:

* **integrity**, from the file alone (this module): every chunk of features
  and labels is read, which makes HDF5 validate its fletcher32 checksum;
  features, labels and paths have the same row count; no NaN or inf; labels
  index the class list; paths are non-empty, sorted and unique (within and
  across splits); the skipped-file lists agree.
* **reproduction**, given the data folder: a seeded random sample of rows is
  embedded again with the recorded weights and transform and compared with
  the stored features. It needs the backbone, so it lives on the embed side
  (:mod:`tlkit.embed.check`) and comes in as the ``reproduce`` step of
  :func:`verify_cache`: the cache package never imports the layer above it.

Each problem is one line; the cache holds only if there are none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from tlkit.cache.reader import (
    H5_DAMAGE,
    class_names_of,
    content_digest,
    one_line,
    open_h5,
    paths_digest,
    split_names,
    stored_digest,
)
from tlkit.cache.schema import FEATURE_DIM, SKIPPED_GROUP, VIEWS_DATASET, Provenance
from tlkit.errors import TlkitError

SCAN_CHUNKS = 16  # chunks read per step of the integrity scan (4096 rows with the default chunking)
MAX_ROWS_LISTED = 5  # rows named in one problem line before it summarises


@dataclass
class VerifyReport:
    """Checks that held (``passed``), problems (one line each) and notes (no effect on the verdict)."""

    path: Path
    passed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"path": str(self.path), "ok": self.ok, "passed": self.passed, "problems": self.problems, "notes": self.notes}


# The reproduction check: (open cache, paths read per split, provenance, report) -> adds its lines to the report.
Reproduce = Callable[[h5py.File, dict[str, np.ndarray], Provenance, VerifyReport], None]


def verify_cache(
    path: str | Path,
    *,
    progress: bool | None = None,
    reproduce: Reproduce | None = None,
) -> VerifyReport:
    """Run the integrity checks on the cache at ``path``, then ``reproduce`` if given; see the module docs."""
    report = VerifyReport(Path(path))
    try:
        f = open_h5(path, check_digest=False)  # checked below, as one problem among the others
    except TlkitError as exc:
        report.problems.append(str(exc))
        return report
    with f:
        paths_by_split: dict[str, np.ndarray] = {}
        try:
            provenance = _check_integrity(f, report, paths_by_split, progress)
        except H5_DAMAGE as exc:  # damage where no check expected it: still one line
            report.problems.append(f"the file is damaged: {one_line(exc)}")
            provenance = None
        if reproduce is None:
            report.notes.append("features not compared with a fresh embedding (pass --data DIR to do so)")
        elif provenance is None:
            report.problems.append("cannot re-embed: the provenance is unreadable")
        else:
            reproduce(f, paths_by_split, provenance, report)
    return report


def _check_integrity(f: h5py.File, report: VerifyReport, paths_by_split: dict, progress: bool | None) -> Provenance | None:
    """Every check that needs only the file; fills ``paths_by_split``; returns the provenance if readable."""
    provenance = _check_root(f, report)
    class_names = class_names_of(f)
    with tqdm(total=_total_rows(f), unit="row", desc="verify", disable=None if progress is None else not progress) as bar:
        for split in split_names(f):
            paths = _check_split(f, split, len(class_names), provenance, report, bar.update)
            if paths is not None:
                paths_by_split[split] = paths
    _check_across_splits(paths_by_split, report)
    _check_skipped(f, paths_by_split, report)
    return provenance


def _total_rows(f: h5py.File) -> int:
    total = 0
    for split in split_names(f):
        try:
            total += len(f[split]["features"])
        except H5_DAMAGE:
            pass
    return total


def _check_root(f: h5py.File, report: VerifyReport) -> Provenance | None:
    provenance = None
    try:
        provenance = Provenance.from_attrs(f.attrs)
    except KeyError as exc:
        report.problems.append(f"provenance attribute {exc} is missing")
    except H5_DAMAGE as exc:
        report.problems.append(f"provenance attributes are unreadable: {one_line(exc)}")
    if provenance is not None and provenance.feature_dim < 1:
        report.problems.append(f"provenance says feature_dim {provenance.feature_dim}, expected a positive width")
    names = class_names_of(f)
    if not names:
        report.problems.append("the class_names attribute is empty")
    elif len(set(names)) != len(names):
        report.problems.append(f"class_names has duplicates: {names}")
    listed = split_names(f)
    extra = [k for k in f.keys() if k not in listed and k != SKIPPED_GROUP]
    if extra:
        report.problems.append(f"groups {extra} are not listed in the splits attribute {listed}")
    stored = stored_digest(f)
    if stored is None:
        report.notes.append("the file carries no content digest (not written by tlkit's assemble): "
                            "attributes and paths cannot be checked against one")
    elif stored != content_digest(f):
        report.problems.append("the root attributes, the skipped-file lists or the path digests do not match "
                               "the content digest: some text in the file was altered")
    if provenance is not None and not report.problems:
        report.passed.append(f"file: finished tlkit cache, {len(names)} classes, splits {', '.join(listed) or '(none)'}, "
                             f"weights {provenance.weights_id}")
    return provenance


def _rows_text(rows: np.ndarray, paths: np.ndarray | None) -> str:
    named = [f"{r}" + (f" ({paths[r]})" if paths is not None and r < len(paths) else "") for r in rows[:MAX_ROWS_LISTED]]
    more = f" and {len(rows) - MAX_ROWS_LISTED} more" if len(rows) > MAX_ROWS_LISTED else ""
    return ", ".join(named) + more


def _check_split(
    f: h5py.File, split: str, n_classes: int, provenance: Provenance | None, report: VerifyReport,
    advance: Callable[[int], None],
) -> np.ndarray | None:
    """Scan one split; return its paths (None when they cannot be read)."""
    before = len(report.problems)
    try:
        group = f[split]
        feats, labels, paths_ds = group["features"], group["labels"], group["paths"]
    except H5_DAMAGE as exc:
        report.problems.append(f"{split}: cannot open its datasets: {one_line(exc)}")
        return None
    dim = provenance.feature_dim if provenance else FEATURE_DIM
    if feats.ndim != 2 or feats.shape[1] != dim or feats.dtype != np.float32:
        report.problems.append(f"{split}/features is {feats.dtype} {feats.shape}, expected float32 (rows, {dim})")
        return None
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        report.problems.append(f"{split}/labels is {labels.dtype} {labels.shape}, expected integers (rows,)")
    n = {len(feats), len(labels), len(paths_ds)}
    if len(n) != 1:
        report.problems.append(f"{split}: row counts differ: features {len(feats)}, labels {len(labels)}, paths {len(paths_ds)}")
    for name, ds in (("features", feats), ("labels", labels)):
        if not ds.fletcher32:
            report.problems.append(f"{split}/{name} carries no fletcher32 checksums, so its integrity cannot be verified")

    try:
        paths = paths_ds.asstr()[...] if len(paths_ds) else np.array([], dtype=object)
    except H5_DAMAGE as exc:
        report.problems.append(f"{split}/paths cannot be read: {one_line(exc)}")
        paths = None
    stored = stored_digest(paths_ds)
    if paths is not None and stored is not None and stored != paths_digest([paths]):
        report.problems.append(f"{split}/paths do not match their sha256 digest: some path was altered")

    step = (feats.chunks[0] if feats.chunks else 256) * SCAN_CHUNKS
    damaged: dict[str, list[tuple[int, int, str]]] = {"features": [], "labels": []}
    nonfinite, out_of_range = [], []
    for start in range(0, max(len(feats), len(labels)), step):
        stop = start + step
        for offset, block in _read(feats, start, stop, damaged["features"]):
            bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
            nonfinite.extend((bad + offset).tolist())
        for offset, block in _read(labels, start, stop, damaged["labels"]):
            bad = np.flatnonzero((block < 0) | (block >= n_classes))
            out_of_range.extend((bad + offset).tolist())
        advance(max(0, min(stop, len(feats)) - start))
    for name, ranges in damaged.items():
        for lo, hi, why in _coalesce(ranges):
            report.problems.append(f"{split}/{name} rows {lo}-{hi - 1} fail their checksum or cannot be read ({why})")
    if nonfinite:
        report.problems.append(f"{split}: {len(nonfinite)} feature row(s) hold NaN or inf: rows {_rows_text(np.array(nonfinite), paths)}")
    if out_of_range:
        report.problems.append(f"{split}: {len(out_of_range)} label(s) outside 0..{n_classes - 1}: rows {_rows_text(np.array(out_of_range), paths)}")
    if paths is not None and len(paths):
        _check_paths(split, paths, report)
    _check_views(group, split, len(feats), provenance, report)
    if len(report.problems) == before:
        views = f"; {group[VIEWS_DATASET].shape[1]} views per row valid" if VIEWS_DATASET in group else ""
        report.passed.append(f"{split}: {len(feats)} rows; checksums valid; row counts agree; no NaN/inf; "
                             f"labels in 0..{n_classes - 1}; paths unique and sorted{views}")
    return paths


def _check_views(group: h5py.Group, split: str, n_rows: int, provenance: Provenance | None, report: VerifyReport) -> None:
    """``/<split>/views``: there exactly where the provenance says (train, all), (rows, K, dim) float32, checksummed, finite."""
    k = provenance.view_count if provenance else 0
    view_splits = provenance.view_splits if provenance else ()
    if VIEWS_DATASET not in group:
        if k and split in view_splits:
            report.problems.append(f"{split}/views is missing, but the provenance records --views {k}")
        return
    views = group[VIEWS_DATASET]
    dim = provenance.feature_dim if provenance else FEATURE_DIM
    if not k or split not in view_splits:
        report.problems.append(f"{split}/views is there, but the provenance records no views for split {split!r}")
        return
    if views.shape != (n_rows, k, dim) or views.dtype != np.float32:
        report.problems.append(f"{split}/views is {views.dtype} {views.shape}, expected float32 ({n_rows}, {k}, {dim})")
        return
    if not views.fletcher32:
        report.problems.append(f"{split}/views carries no fletcher32 checksums, so its integrity cannot be verified")
    damaged: list[tuple[int, int, str]] = []
    nonfinite: list[int] = []
    step = (views.chunks[0] if views.chunks else 256) * SCAN_CHUNKS
    for start in range(0, n_rows, step):
        for offset, block in _read(views, start, start + step, damaged):
            nonfinite.extend((np.flatnonzero(~np.isfinite(block).all(axis=(1, 2))) + offset).tolist())
    for lo, hi, why in _coalesce(damaged):
        report.problems.append(f"{split}/views rows {lo}-{hi - 1} fail their checksum or cannot be read ({why})")
    if nonfinite:
        report.problems.append(f"{split}/views: {len(nonfinite)} row(s) hold NaN or inf: rows {_rows_text(np.array(nonfinite), None)}")


def _read(ds: h5py.Dataset, start: int, stop: int, damaged: list[tuple[int, int, str]]) -> list[tuple[int, np.ndarray]]:
    """Rows [start, stop) as (first row, array) pieces; a failing read is narrowed down to
    the chunks that fail, which are recorded in ``damaged`` and left out."""
    stop = min(stop, len(ds))
    if start >= stop:
        return []
    try:
        return [(start, ds[start:stop])]
    except H5_DAMAGE:
        pass
    rows = ds.chunks[0] if ds.chunks else stop - start
    pieces = []
    for lo in range(start, stop, rows):
        hi = min(lo + rows, stop)
        try:
            pieces.append((lo, ds[lo:hi]))
        except H5_DAMAGE as exc:
            damaged.append((lo, hi, one_line(exc)))
    return pieces


def _coalesce(ranges: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    for lo, hi, why in sorted(ranges):
        if out and out[-1][1] == lo and out[-1][2] == why:
            out[-1] = (out[-1][0], hi, why)
        else:
            out.append((lo, hi, why))
    return out


def _check_paths(split: str, paths: np.ndarray, report: VerifyReport) -> None:
    empty = np.flatnonzero(paths == "")
    if len(empty):
        report.problems.append(f"{split}: {len(empty)} empty path(s): rows {_rows_text(empty, None)}")
    if len(paths) > 1:
        unsorted = np.flatnonzero(paths[1:] < paths[:-1])
        if len(unsorted):
            report.problems.append(f"{split}: paths are not sorted (first at row {unsorted[0] + 1}: {paths[unsorted[0] + 1]!r} after {paths[unsorted[0]]!r})")
            values, counts = np.unique(paths, return_counts=True)
            dups = values[counts > 1]
        else:
            dups = np.unique(paths[1:][paths[1:] == paths[:-1]])
        if len(dups):
            shown = ", ".join(map(str, dups[:MAX_ROWS_LISTED])) + (f" and {len(dups) - MAX_ROWS_LISTED} more" if len(dups) > MAX_ROWS_LISTED else "")
            report.problems.append(f"{split}: {len(dups)} path(s) appear more than once: {shown}")


def _check_across_splits(paths_by_split: dict[str, np.ndarray], report: VerifyReport) -> None:
    names = list(paths_by_split)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = np.intersect1d(paths_by_split[a], paths_by_split[b])
            if len(both):
                report.problems.append(f"{len(both)} path(s) are in both {a} and {b} (a leak between splits), e.g. {both[0]}")


def _check_skipped(f: h5py.File, paths_by_split: dict[str, np.ndarray], report: VerifyReport) -> None:
    if SKIPPED_GROUP not in f:
        report.problems.append(f"the /{SKIPPED_GROUP} group is missing")
        return
    try:
        g = f[SKIPPED_GROUP]
        lists = {name: g[name].asstr()[...] for name in ("paths", "splits", "reasons")}
    except H5_DAMAGE as exc:
        report.problems.append(f"/{SKIPPED_GROUP} cannot be read: {one_line(exc)}")
        return
    lengths = {name: len(v) for name, v in lists.items()}
    if len(set(lengths.values())) != 1:
        report.problems.append(f"/{SKIPPED_GROUP} lists differ in length: {lengths}")
        return
    embedded = []
    for split, paths in paths_by_split.items():
        mine = lists["paths"][lists["splits"] == split]
        if len(mine):
            embedded.extend(mine[np.isin(mine, paths)].tolist())
    if embedded:
        report.problems.append(f"{len(embedded)} file(s) are listed as skipped and also have features, e.g. {embedded[0]}")
    else:
        report.passed.append(f"skipped: {lengths['paths']} file(s) listed, none of them among the rows")
