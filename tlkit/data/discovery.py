"""Discover labelled images under a data root.

Two layouts are understood:

* ``ROOT/<split>/<class>/<image>`` with splits ``train``, ``val``, ``test``;
* ``ROOT/<class>/<image>`` (no split folders), stored as the split ``all``.

Class names are sorted and get one index across all splits, so a class that is
missing from one split keeps the same label everywhere. Images are found by
extension in any case, in nested folders too; hidden files and folders are
ignored and symbolic links are followed without looping.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tlkit.errors import DataError
from tlkit.splits import ALL_SPLIT, SPLIT_NAMES, SPLIT_ORDER, ordered_splits

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class ImageItem:
    """One image: its path relative to the data root (POSIX), split and class."""

    path: str
    split: str
    class_name: str


@dataclass
class DataIndex:
    """Everything discovery found: items sorted by (split order, path)."""

    root: Path
    class_names: list[str]
    items: list[ImageItem]
    ignored: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str, str]] = field(default_factory=list)  # (path, split, reason) found broken by discovery

    @property
    def splits(self) -> list[str]:
        return ordered_splits({item.split for item in self.items})

    def label(self, item: ImageItem) -> int:
        return self._label_of[item.class_name]

    def __post_init__(self) -> None:
        self._label_of = {name: i for i, name in enumerate(self.class_names)}

    def source(self, path: str):
        """What the reader opens for the image stored as ``path``: here its file (tar shards: tlkit.data.shards)."""
        return str(self.root / path)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class, for summaries."""
        out: dict[str, dict[str, int]] = {}
        for item in self.items:
            per_class = out.setdefault(item.split, {})
            per_class[item.class_name] = per_class.get(item.class_name, 0) + 1
        return out


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not _is_hidden(p.name) and p.is_dir())


def find_images(folder: Path) -> list[Path]:
    """Everything named like an image below ``folder`` (recursively, links followed once), sorted.

    Names that cannot be read as images (dangling links, folders named ``x.jpg``) are
    included: decoding them reports why, so they are listed as skipped, never dropped unseen.
    """
    found: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        st = os.stat(dirpath)
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:  # a symlink loop or a second link to a folder already walked
            dirnames[:] = []
            continue
        seen_dirs.add(key)
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        # Everything named like an image is listed, even a dangling link or a folder named x.jpg:
        # decoding it then fails with the reason (tlkit.data.decode), and it is reported as skipped.
        for name in [*filenames, *dirnames]:
            if not _is_hidden(name) and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return sorted(found)


def discover(root: str | os.PathLike) -> DataIndex:
    """Index the labelled images under ``root`` or raise :class:`DataError`."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data folder {root} is not a folder")

    top = _visible_dirs(root)
    split_dirs = [d for d in top if d.name in SPLIT_NAMES]
    ignored: list[str] = []
    if split_dirs:
        ignored = [d.name for d in top if d.name not in SPLIT_NAMES]
        class_dirs = [(d.name, c) for d in split_dirs for c in _visible_dirs(d)]
    else:
        class_dirs = [(ALL_SPLIT, c) for c in top]

    items: list[ImageItem] = []
    for split, class_dir in class_dirs:
        for path in find_images(class_dir):
            rel = path.relative_to(root).as_posix()
            items.append(ImageItem(path=rel, split=split, class_name=class_dir.name))

    if not items:
        raise DataError(
            f"no images found in {root}: expected ROOT/<class>/<image> or "
            f"ROOT/<split>/<class>/<image> with splits {', '.join(SPLIT_NAMES)} "
            f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    split_order = {s: i for i, s in enumerate(SPLIT_ORDER)}
    items.sort(key=lambda it: (split_order[it.split], it.path))
    class_names = sorted({it.class_name for it in items})
    return DataIndex(root=root, class_names=class_names, items=items, ignored=ignored)
