"""The finished work of an embed in progress, ``<cache>.parts/``: its names, its manifest, reading it.

    <cache>.parts/
        manifest.json              the provenance of the rows, how many images the run covers, when it started
        part-NNNNNN.h5             rows embedded by the local backend, in the order they were flushed
        shard-KKKKK-NNNNNN.h5      rows of shard K (the Ray backend)

A part file is a small cache-shaped HDF5 file (``format`` = :data:`PART_FORMAT`)
that appears under its final name only once it is complete. The folder appears
with its manifest in one rename (:func:`start_parts`) and disappears in one
(:func:`discard_parts`) once its rows are published in the cache. ``tlkit embed``
writes and resumes from it, ``tlkit info`` reports how far it has got, and a
reader of a missing cache mentions it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from tlkit.atomic import atomic_text, discard_dir, replace_dir, tmp_name
from tlkit.cache.reader import H5_DAMAGE, H5_LOCKING, one_line, read_paths, read_skipped, split_names
from tlkit.cache.schema import PART_FORMAT, parts_dir_of  # parts_dir_of: part of the cache's contract, read there
from tlkit.errors import CacheError

PARTS_MANIFEST = "manifest.json"
LOCAL_PREFIX = "part"  # part files of the local backend: part-NNNNNN.h5
SHARD_PREFIX = "shard"  # part files of Ray shard K: shard-KKKKK-NNNNNN.h5


def shard_prefix(k: int) -> str:
    return f"{SHARD_PREFIX}-{k:05d}"


def part_name(prefix: str, seq: int) -> str:
    return f"{prefix}-{seq:06d}.h5"


def part_files(parts_dir: Path, prefix: str | None = None) -> list[Path]:
    """The part files in ``parts_dir`` (those named ``<prefix>-*.h5`` if given), sorted by name."""
    return sorted(Path(parts_dir).glob(f"{prefix}-*.h5" if prefix else "*.h5"))


def next_seq(parts_dir: Path, prefix: str) -> int:
    """The sequence number of the next ``<prefix>-NNNNNN.h5``: after every one already there."""
    taken = [int(p.stem.rsplit("-", 1)[1]) for p in part_files(parts_dir, prefix)]
    return max(taken, default=-1) + 1


# -- the manifest and the folder ----------------------------------------------------------------


def read_manifest(parts_dir: Path):
    """The parsed manifest, or None when there is none; a damaged one raises OSError or ValueError."""
    try:
        text = (Path(parts_dir) / PARTS_MANIFEST).read_text()
    except FileNotFoundError:
        return None
    return json.loads(text)


def start_parts(cache: Path, manifest: dict) -> Path:
    """Create ``<cache>.parts/`` with its manifest in one step, or rewrite the manifest of an existing one."""
    parts_dir = parts_dir_of(cache)
    text = json.dumps(manifest, indent=1)
    if parts_dir.is_dir():
        atomic_text(parts_dir / PARTS_MANIFEST, text)
        return parts_dir
    staging = tmp_name(cache, "-parts")  # removed by remove_stale_tmp if we die here
    staging.mkdir()
    try:
        atomic_text(staging / PARTS_MANIFEST, text)
        replace_dir(staging, parts_dir)
    except BaseException:  # a full disk: leave nothing behind
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return parts_dir


def discard_parts(cache: Path) -> None:
    """Remove ``<cache>.parts/`` at once (its rows are published, or there were none)."""
    discard_dir(parts_dir_of(cache), cache)


# -- reading the part files ---------------------------------------------------------------------


@dataclass
class PartsScan:
    """What the finished part files hold."""

    files: list[Path] = field(default_factory=list)  # readable part files, sorted by name
    rows_per_split: dict[str, int] = field(default_factory=dict)
    embedded: set[str] = field(default_factory=set)  # paths with a row (when read with_paths)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (path, split, reason)
    damaged: list[str] = field(default_factory=list)  # "name: reason" (when read with keep_going)

    @property
    def rows(self) -> int:
        return sum(self.rows_per_split.values())

    @property
    def done(self) -> set[str]:
        """Every path the parts account for: embedded, or tried and skipped."""
        return self.embedded | {path for path, _, _ in self.skipped}


def scan_parts(parts_dir: Path, prefix: str | None = None, *, with_paths: bool = True,
               keep_going: bool = False) -> PartsScan:
    """Read the part files of ``parts_dir`` (files of another format are ignored).

    ``with_paths`` reads every row's path (resuming needs them; a progress report
    only counts rows). A part that cannot be read raises :class:`CacheError`,
    or with ``keep_going`` is listed in ``damaged`` (and one that disappears
    meanwhile, published by a running embed, is passed over).
    """
    scan = PartsScan()
    for part in part_files(parts_dir, prefix):
        rows: dict[str, int] = {}
        embedded: list[str] = []
        try:
            with h5py.File(part, "r", locking=H5_LOCKING) as f:
                if f.attrs.get("format") != PART_FORMAT:
                    continue
                for split in split_names(f):
                    rows[split] = len(f[split]["labels"])
                    if with_paths:
                        embedded.extend(read_paths(f[split]).tolist())
                skipped = read_skipped(f)
        except H5_DAMAGE as exc:
            if keep_going and isinstance(exc, FileNotFoundError):
                continue  # published and removed while we looked
            if keep_going:
                scan.damaged.append(f"{part.name}: {one_line(exc)}")
                continue
            raise CacheError(f"part file {part} is damaged ({exc}); delete it and rerun to embed its images again") from None
        scan.files.append(part)
        for split, n in rows.items():
            scan.rows_per_split[split] = scan.rows_per_split.get(split, 0) + n
        scan.embedded.update(embedded)
        scan.skipped.extend(skipped)
    return scan
