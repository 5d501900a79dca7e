"""Reading a feature cache into numpy, with every check a careful reader makes.

    >>> from tlkit.cache import load_cache
    >>> cache = load_cache("cache/feats.h5")
    >>> X, y = cache["train"].features, cache["train"].labels
    >>> cache.class_names, cache.provenance.weights_id
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from tlkit.cache.schema import FORMAT, SCHEMA_VERSION, SKIPPED_GROUP, Provenance
from tlkit.errors import CacheError


@dataclass
class SplitArrays:
    """One split of a cache, as numpy arrays with matching rows."""

    features: np.ndarray  # float32 (N, 512)
    labels: np.ndarray  # int64 (N,)
    paths: np.ndarray  # str (N,)

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


def open_h5(path: str | Path, *, allow_unfinished: bool = False) -> h5py.File:
    """Open a cache read-only after checking it exists, is HDF5, is ours and is finished."""
    path = Path(path)
    if not path.exists():
        parts = path.with_name(path.name + ".parts")
        if parts.is_dir():
            raise CacheError(f"{path} is unfinished: an embed into it is running or was interrupted ({parts}/ holds its progress); rerun the same `tlkit embed` command to finish it")
        raise CacheError(f"cache {path} does not exist; create it with `tlkit embed DATA_DIR {path}`")
    if path.is_dir():
        raise CacheError(f"{path} is a folder, not a cache file")
    try:
        if not h5py.is_hdf5(path):
            raise CacheError(f"{path} is not an HDF5 file")
        f = h5py.File(path, "r")
    except CacheError:
        raise
    except OSError as exc:
        raise CacheError(f"{path} cannot be read as HDF5 (truncated or corrupt?): {exc}") from None
    try:
        check_root(f, path, allow_unfinished=allow_unfinished)
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


def load_cache(path: str | Path, splits: list[str] | None = None) -> FeatureCache:
    """Read a finished cache (all splits, or the ones named) into numpy arrays."""
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
                    features=g["features"][...], labels=g["labels"][...], paths=read_paths(g)
                )
                n = {len(arrays[split].features), len(arrays[split].labels), len(arrays[split].paths)}
                if len(n) != 1:
                    raise CacheError(f"{path}: split {split!r} has features, labels and paths of different lengths")
            return FeatureCache(
                path=path,
                class_names=class_names_of(f),
                provenance=provenance,
                splits=arrays,
                skipped=read_skipped(f),
                attrs={k: _plain(v) for k, v in f.attrs.items()},
            )
        except (KeyError, OSError, ValueError) as exc:
            raise CacheError(f"{path} is damaged: {exc}") from None


def _plain(value):
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (np.integer, np.bool_, np.floating)):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value
