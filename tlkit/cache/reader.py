"""Reading a feature cache into numpy, with every check a careful reader makes.

    >>> from tlkit.cache import load_cache
    >>> cache = load_cache("cache/feats.h5")
    >>> X, y = cache["train"].features, cache["train"].labels
    >>> cache.class_names, cache.provenance.weights_id
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from tlkit.cache.schema import FORMAT, SCHEMA_VERSION, SKIPPED_GROUP, VIEWS_DATASET, Provenance, parts_dir_of
from tlkit.errors import CacheError

# HDF5 flocks every file it opens (shared for readers, exclusive for writers) for as long as it
# is open. tlkit never modifies a published file in place (it renames a new one over it), so
# that lock protects nothing here; "best-effort" keeps it where the filesystem supports it and
# lets reading work where it does not (some NFS mounts). HDF5_USE_FILE_LOCKING overrides this.
H5_LOCKING = "best-effort"

# What h5py raises when the bytes of a file are not what its metadata promise
# (checksum failure, truncated or overwritten structures).
H5_DAMAGE = (OSError, KeyError, ValueError, RuntimeError, TypeError)


# HDF5 checksums chunks of fixed-size data (features, labels: fletcher32) and, in the 1.10
# format, its own structures -- but not variable-length strings (paths, class names, the
# provenance). Finished caches therefore carry sha256 digests of that text: one on each
# split's paths dataset, and one over all root attributes, the skipped lists and those
# path digests. Files without them (hand-made ones) are read without this check. The digests
# are UTF-8 text; older caches hold them as fixed-length byte strings, which read the same
# (see _plain).
PATHS_DIGEST_ATTR = "sha256"
CONTENT_DIGEST_ATTR = "content_sha256"


class PathsDigest:
    """sha256 of a list of paths fed a block at a time, in row order (each path ends in NUL, which no path holds)."""

    def __init__(self):
        self._sha = hashlib.sha256()

    def update(self, block) -> None:
        if len(block):
            self._sha.update(("\0".join(block) + "\0").encode("utf-8", "surrogatepass"))

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def paths_digest(blocks) -> str:
    """sha256 of a split's paths, given as blocks (arrays or lists of str) in row order."""
    digest = PathsDigest()
    for block in blocks:
        digest.update(block)
    return digest.hexdigest()


def stored_digest(obj) -> str | None:
    """The digest recorded on a paths dataset or a file, None if it has none.

    Not ``attrs.get``: h5py turns some read failures into KeyError, which
    ``get`` would take for "no digest" on exactly the damaged files.
    """
    key = PATHS_DIGEST_ATTR if isinstance(obj, h5py.Dataset) else CONTENT_DIGEST_ATTR
    return _plain(obj.attrs[key]) if key in obj.attrs else None


def content_digest(f: h5py.File) -> str:
    """sha256 over the root attributes, the skipped lists and each split's paths digest."""
    digest = hashlib.sha256()
    for key in sorted(k for k in f.attrs if k != CONTENT_DIGEST_ATTR):
        digest.update(f"{key}={json.dumps(_plain(f.attrs[key]), sort_keys=True)}\n".encode())
    for split in split_names(f):
        if split in f and "paths" in f[split]:
            digest.update(f"{split}:{_plain(f[split]['paths'].attrs.get(PATHS_DIGEST_ATTR, ''))}\n".encode())
    if SKIPPED_GROUP in f:
        for name in ("paths", "splits", "reasons"):
            digest.update(f"{SKIPPED_GROUP}/{name}:{paths_digest([f[SKIPPED_GROUP][name].asstr()[...].tolist()])}\n".encode())
    return digest.hexdigest()


def check_content_digest(f: h5py.File, path) -> None:
    """Raise :class:`CacheError` if the attributes, skipped lists or path digests were altered."""
    stored = stored_digest(f)
    if stored is not None and stored != content_digest(f):
        raise CacheError(f"{path} is damaged: its attributes or skipped-file lists do not match their sha256 digest; "
                         f"check it with `tlkit verify {path}`")


def check_paths_digest(group: h5py.Group, paths, path) -> None:
    """Raise :class:`CacheError` if a split's paths do not match their recorded digest."""
    stored = stored_digest(group["paths"])
    if stored is not None and stored != paths_digest([paths]):
        raise CacheError(f"{path} is damaged: the paths of split {group.name.strip('/')!r} do not match their sha256 digest; "
                         f"check it with `tlkit verify {path}`")


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextlib.contextmanager
def reporting_damage(path, what: str = ""):
    """Turn h5py's low-level read failures inside the block into one-line :class:`CacheError`."""
    try:
        yield
    except CacheError:
        raise
    except H5_DAMAGE as exc:
        where = f" ({what})" if what else ""
        raise CacheError(f"{path} is damaged{where}: {one_line(exc)}; check it with `tlkit verify {path}`") from None


@dataclass
class SplitArrays:
    """One split of a cache, as numpy arrays with matching rows."""

    features: np.ndarray  # float32 (N, 512)
    labels: np.ndarray  # int64 (N,)
    paths: np.ndarray  # str (N,)
    views: np.ndarray | None = None  # float32 (N, K, 512): K augmented views per row (``embed --views K``), or None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class FeatureCache:
    """A finished cache read into memory."""

    path: Path
    class_names: list[str]
    provenance: Provenance
    splits: dict[str, SplitArrays]
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (path, split, reason)
    attrs: dict = field(default_factory=dict)

    def __getitem__(self, split: str) -> SplitArrays:
        try:
            return self.splits[split]
        except KeyError:
            raise CacheError(f"{self.path} has no split {split!r} (it has: {', '.join(self.splits)})") from None

    def __contains__(self, split: str) -> bool:
        return split in self.splits


def open_h5(path: str | Path, *, allow_unfinished: bool = False, check_digest: bool = True) -> h5py.File:
    """Open a cache read-only after checking it exists, is HDF5, is ours, is finished and
    (``check_digest``) that its attributes and skipped lists match their digest."""
    path = Path(path)
    if not path.exists():
        parts = parts_dir_of(path)
        if parts.is_dir():
            raise CacheError(f"{path} is unfinished: an embed into it is running or was interrupted ({parts}/ holds its progress); rerun the same `tlkit embed` command to finish it")
        raise CacheError(f"cache {path} does not exist; create it with `tlkit embed DATA_DIR {path}`")
    if path.is_dir():
        raise CacheError(f"{path} is a folder, not a cache file")
    try:
        if not h5py.is_hdf5(path):
            raise CacheError(f"{path} is not an HDF5 file")
        f = h5py.File(path, "r", locking=H5_LOCKING)
    except CacheError:
        raise
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES) and "lock" in str(exc):
            raise CacheError(
                f"{path} is open for writing in another program (HDF5 file lock); tlkit never writes a "
                f"published cache in place, so close that program's handle (or open it read-only)"
            ) from None
        raise CacheError(f"{path} cannot be read as HDF5 (truncated or corrupt?): {one_line(exc)}") from None
    try:
        with reporting_damage(path, "root attributes"):
            check_root(f, path, allow_unfinished=allow_unfinished)
            if check_digest:
                check_content_digest(f, path)
    except BaseException:
        f.close()
        raise
    return f


def check_root(f: h5py.File, path, *, allow_unfinished: bool = False) -> None:
    attrs = f.attrs
    if attrs.get("format") != FORMAT:
        raise CacheError(f"{path} is HDF5 but not a tlkit feature cache (no format={FORMAT!r} attribute)")
    version = int(attrs.get("schema_version", -1))
    if version != SCHEMA_VERSION:
        raise CacheError(f"{path} has cache schema version {version}; this tlkit reads version {SCHEMA_VERSION}")
    if not allow_unfinished and not bool(attrs.get("complete", False)):
        raise CacheError(f"{path} is unfinished (its 'complete' attribute is false); rerun the embed that writes it")


def split_names(f: h5py.File) -> list[str]:
    return [str(s) for s in f.attrs.get("splits", [])]


def class_names_of(f: h5py.File) -> list[str]:
    return [str(s) for s in f.attrs.get("class_names", [])]


def read_skipped(f: h5py.File) -> list[tuple[str, str, str]]:
    if SKIPPED_GROUP not in f:
        return []
    g = f[SKIPPED_GROUP]
    return list(zip(g["paths"].asstr()[...].tolist(), g["splits"].asstr()[...].tolist(), g["reasons"].asstr()[...].tolist()))


def read_paths(group: h5py.Group) -> np.ndarray:
    return group["paths"].asstr()[...] if len(group["paths"]) else np.array([], dtype=str)


def load_cache(path: str | Path, splits: list[str] | None = None, views: bool = True) -> FeatureCache:
    """Read a finished cache (all splits, or the ones named) into numpy arrays.

    ``views``: also read the augmented views of the splits that have them (``SplitArrays.views``).
    """
    path = Path(path)
    with open_h5(path) as f:
        try:
            provenance = Provenance.from_attrs(f.attrs)
            names = split_names(f)
            wanted = names if splits is None else [s for s in splits if s in names]
            arrays = {}
            for split in wanted:
                g = f[split]
                arrays[split] = SplitArrays(
                    features=g["features"][...], labels=g["labels"][...], paths=read_paths(g),
                    views=g[VIEWS_DATASET][...] if views and VIEWS_DATASET in g else None,
                )
                check_paths_digest(g, arrays[split].paths.tolist(), path)
                n = {len(arrays[split].features), len(arrays[split].labels), len(arrays[split].paths),
                     *([] if arrays[split].views is None else [len(arrays[split].views)])}
                if len(n) != 1:
                    raise CacheError(f"{path}: split {split!r} has features, labels, paths (and views) of different lengths")
            return FeatureCache(
                path=path,
                class_names=class_names_of(f),
                provenance=provenance,
                splits=arrays,
                skipped=read_skipped(f),
                attrs={k: _plain(v) for k, v in f.attrs.items()},
            )
        except CacheError:
            raise
        except H5_DAMAGE as exc:
            raise CacheError(f"{path} is damaged: {one_line(exc)}; check it with `tlkit verify {path}`") from None


def _plain(value):
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (np.integer, np.bool_, np.floating)):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value
