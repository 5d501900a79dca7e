"""Discover labelled images inside tar shards (webdataset / img2dataset layout).

    tlkit embed 'shards/{00000..00099}.tar' cache.h5     # brace expansion, as webdataset does it
    tlkit embed shards/ cache.h5                          # every *.tar below a folder

A shard holds samples: members that share a key (``000012.jpg``, ``000012.cls``,
``000012.json``), grouped by webdataset's own rule (:func:`webdataset.tariterators.base_plus_ext`:
the key is the name up to the first dot of its last component). The label is the text of
``KEY.cls``, or a field of ``KEY.json`` (``label_key``); the split is a JSON field
(``split_key``) or else the shard's folder or file name (``train/…``, ``…-val-0003.tar``),
else ``all``. Labels that are all integers (img2dataset's ``.cls``) sort numerically, so
class ``"3"`` keeps index 3.

Discovery reads the tar headers and the small label members only, seeking past the image
bytes, and records where each image's bytes are (:class:`TarMember`). The reader then
decodes a member from those bytes, in the same worker processes and batches as image files,
so a cache's path for it is ``SHARD/KEY`` and everything after discovery (resume, skipped
files, Ray) works as for a folder. A member cut short (a truncated tar) fails to decode like a
truncated file: it is skipped and listed, not fatal.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from tlkit.splits import ALL_SPLIT, SPLIT_NAMES, SPLIT_ORDER
from tlkit.data.discovery import IMAGE_EXTENSIONS, DataIndex, ImageItem, discover
from tlkit.errors import BadImage, DataError
from tlkit.extras import require

SHARD_SUFFIX = ".tar"
IMAGE_EXTS = {ext.lstrip(".") for ext in IMAGE_EXTENSIONS}


@dataclass(frozen=True)
class TarMember:
    """Where one image's bytes are: a byte range of a tar file (read with one ``pread``)."""

    shard: str  # absolute path of the tar file
    offset: int
    size: int

    def open_member(self) -> io.BytesIO:
        """The member's bytes as a file object; :class:`BadImage` if the tar ends before they do."""
        try:
            fd = os.open(self.shard, os.O_RDONLY)
        except OSError as exc:
            raise BadImage(f"cannot open its tar shard {self.shard}: {exc.strerror}") from None
        try:
            data = os.pread(fd, self.size, self.offset)
        finally:
            os.close(fd)
        if len(data) < self.size:
            raise BadImage(f"truncated tar member: {len(data)} of {self.size} bytes in {self.shard}")
        return io.BytesIO(data)


class ShardIndex(DataIndex):
    """A :class:`DataIndex` whose items are tar members; :meth:`source` says where each one's bytes are."""

    def __init__(self, root, class_names, items, members: dict[str, TarMember], ignored=()):
        super().__init__(root=root, class_names=class_names, items=items, ignored=list(ignored))
        self.members = members

    def source(self, path: str) -> TarMember:
        return self.members[path]


def discover_source(data, label_key: str | None = None, split_key: str | None = None) -> DataIndex:
    """The images of ``data``: tar shards (:func:`discover_shards`) or an image folder (:func:`discover`)."""
    if looks_like_shards(data):
        return discover_shards(data, label_key, split_key)
    if label_key is not None or split_key is not None:
        raise DataError("--label-key and --split-key apply to tar shards only; an image folder's labels are its "
                        "class folders")
    return discover(data)


def looks_like_shards(data) -> bool:
    """True for a ``.tar`` file or pattern, or a folder with ``.tar`` files (at its top or one level down)
    and no images where an image folder has them (``<class>/<image>``, ``<split>/<class>/<image>``)."""
    text = str(data)
    if text.endswith(SHARD_SUFFIX) or ("{" in text and SHARD_SUFFIX in text):
        return True
    folder = Path(text)
    if not folder.is_dir() or not any(p for pattern in ("*", "*/*") for p in folder.glob(pattern + SHARD_SUFFIX)):
        return False
    return not any(p.suffix.lower() in IMAGE_EXTENSIONS for pattern in ("*/*", "*/*/*") for p in folder.glob(pattern))


def expand_shards(spec) -> tuple[Path, list[Path], list[str]]:
    """(root, shard files, names that do not exist) of a brace pattern, a single .tar or a folder (every .tar below it), or a DataError."""
    text = str(spec)
    if Path(text).is_dir():
        root = Path(text)
        shards = sorted(p for p in root.rglob(f"*{SHARD_SUFFIX}") if p.is_file() and not p.name.startswith("."))
        if not shards:
            raise DataError(f"no {SHARD_SUFFIX} shards found in {root}")
        return root.resolve(), shards, []
    wds = require("webdataset.shardlists", "shards", "tar-shard input")
    names = wds.expand_urls(text)  # braces ({000..099}, {a,b}) and "::" lists, as webdataset reads them
    shards = [Path(n) for n in names if Path(n).is_file()]
    if not shards:
        raise DataError(f"the shard pattern {text} matches no file ({len(names)} name(s) expanded, none exists)")
    missing = [n for n in names if not Path(n).is_file()]
    root = Path(os.path.commonpath([str(p.parent.resolve()) for p in shards]))
    return root, sorted(set(shards), key=str), missing


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").strip()


def _split_of_shard(rel: str) -> str:
    for part in reversed(Path(rel).parts):
        if part in SPLIT_NAMES:
            return part
        tokens = Path(part).name.replace(".", "-").replace("_", "-").split("-")
        for split in SPLIT_NAMES:
            if split in tokens:
                return split
    return ALL_SPLIT


def _walk(path: Path) -> tuple[dict[str, dict], list[str], bool]:
    """(samples by key, keys in tar order, whether the tar is cut short) of one shard, from its headers.

    A sample is ``{"image": TarMember, "cls": bytes, "json": bytes}`` (whichever it has); the label
    members are read, the image bytes are seeked past.
    """
    from webdataset.tariterators import base_plus_ext

    samples: dict[str, dict] = {}
    order: list[str] = []
    size = path.stat().st_size
    truncated = False
    try:
        with tarfile.open(path, "r:") as tar:  # seekable: headers are read, image bytes skipped
            for info in tar:
                if not info.isreg():
                    continue
                key, ext = base_plus_ext(info.name)
                if key is None or Path(info.name).name.startswith("__"):
                    continue
                ext = ext.lower()
                sample = samples.get(key)
                if sample is None:
                    sample = samples[key] = {}
                    order.append(key)
                truncated = truncated or info.offset_data + info.size > size
                if ext in IMAGE_EXTS and "image" not in sample:
                    sample["image"] = TarMember(str(path.resolve()), info.offset_data, info.size)
                elif ext in ("cls", "json") and info.offset_data + info.size <= size:
                    sample[ext] = tar.extractfile(info).read()
    except tarfile.ReadError as exc:  # a damaged header: keep what came before it
        if not samples:
            raise DataError(f"{path} is not a readable tar file: {exc}") from None
        truncated = True
    return samples, order, truncated


def index_shard(path: Path, label_key: str | None, split_key: str | None):
    """Yield (key, TarMember, label, split or None, why unreadable or None) of each sample with an image.

    A sample the tar ends inside of (a truncated copy) has no label to read: it comes back unreadable,
    to be skipped and listed like a truncated image file, instead of stopping the whole embed.
    """
    samples, order, truncated = _walk(path)
    for key in order:
        sample = samples[key]
        if "image" not in sample:
            continue
        meta = {}
        if label_key is not None or split_key is not None:
            try:
                meta = json.loads(sample.get("json", b"{}"))
            except ValueError:
                meta = {}
        if label_key is None:
            label = _text(sample["cls"]) if "cls" in sample else None
            where = f"no {key}.cls (or give --label-key FIELD to read a field of {key}.json)"
        else:
            label = meta.get(label_key) if isinstance(meta, dict) else None
            label = None if label is None else str(label).strip()
            where = f"{key}.json has no field {label_key!r}"
        if not label and truncated:
            yield key, sample["image"], None, None, f"truncated tar member: {path.name} ends before this sample's label"
            continue
        if not label:
            raise DataError(f"tar shard {path} has no label for {key}: {where}")
        split = str(meta.get(split_key)) if split_key is not None and isinstance(meta, dict) and meta.get(split_key) else None
        if split_key is not None and split not in SPLIT_NAMES:
            raise DataError(f"tar shard {path}: {key}.json field {split_key!r} is {split!r}; expected one of "
                            f"{', '.join(SPLIT_NAMES)}")
        yield key, sample["image"], label, split, None


def _class_order(labels: set[str]) -> list[str]:
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)  # .cls indices keep their number as the label
    return sorted(labels)


def discover_shards(spec, label_key: str | None = None, split_key: str | None = None) -> ShardIndex:
    """Index every sample in the shards ``spec`` names; cache paths are ``SHARD/KEY``."""
    root, shards, missing = expand_shards(spec)
    ignored = [f"{n} (does not exist)" for n in missing]
    items, members, unreadable = [], {}, []
    for shard in shards:
        rel = shard.resolve().relative_to(root).as_posix()
        for key, member, label, split, why in index_shard(shard, label_key, split_key):
            path = f"{rel}/{key}"
            if why is not None:
                unreadable.append((path, split or _split_of_shard(rel), why))
                continue
            items.append(ImageItem(path=path, split=split or _split_of_shard(rel), class_name=label))
            members[path] = member
    if not items:
        raise DataError(f"no images found in the tar shards {spec} (members named KEY.jpg, KEY.png, ... "
                        f"beside KEY.cls or KEY.json)")
    split_order = {s: i for i, s in enumerate(SPLIT_ORDER)}
    items.sort(key=lambda it: (split_order[it.split], it.path))
    index = ShardIndex(root, _class_order({it.class_name for it in items}), items, members, ignored)
    index.unreadable = unreadable
    return index


def locate_members(spec, paths) -> tuple[dict[str, TarMember], list[str]]:
    """Where the cache paths ``SHARD/KEY`` are in the shards ``spec`` names (``tlkit verify --data``).

    Only the shards the paths name are read (their headers). Returns the members found and one
    problem line per absence: all the shards that are not among ``spec``'s (moved, or another
    pattern) in one line, a shard that cannot be read, a key a shard does not hold. A pattern
    matching no file is a :class:`DataError`, as for ``tlkit embed``.
    """
    root, shards, _ = expand_shards(spec)
    known = {shard.resolve().relative_to(root).as_posix(): shard for shard in shards}
    wanted: dict[str, list[str]] = {}
    for path in paths:
        wanted.setdefault(path.rpartition("/")[0], []).append(path)
    absent = [shard for shard in wanted if shard not in known]
    problems = []
    if absent:
        rows = sum(len(wanted[shard]) for shard in absent)
        problems.append(f"{len(absent)} of the {len(wanted)} shard(s) the sampled rows are in are not among the "
                        f"shards of {spec} (e.g. {absent[0] or '(no shard)'}, looked for as {root / absent[0]}), "
                        f"so {rows} sampled row(s) cannot be re-embedded: give the pattern or folder the cache "
                        f"was embedded from")
    found = {}
    for shard, shard_paths in wanted.items():
        if shard not in known:
            continue
        try:
            samples, _, _ = _walk(known[shard])
        except (DataError, OSError) as exc:
            problems.append(f"{shard}: cannot be read ({exc}), so {len(shard_paths)} sampled row(s) cannot be re-embedded")
            continue
        for path in shard_paths:
            member = samples.get(path.rpartition("/")[2], {}).get("image")
            if member is None:
                problems.append(f"{path}: no such image in {known[shard]} (cannot re-embed it)")
            else:
                found[path] = member
    return found, problems
