"""Tar shards for the tests (no tests here): an image folder written as webdataset / img2dataset shards."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path


def sample_key(image: Path) -> str:
    """One key per image of a <split>/<class>/<image> folder (webdataset keys hold no dot)."""
    return f"{image.parent.name}_{image.stem}".replace(".", "_")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(data: Path, out: Path, *, per_shard: int = 1000, label: str = "cls", split_in: str = "name",
                 layout: str = "{split}-{n:05d}.tar") -> list[Path]:
    """``data``'s images as tar shards: KEY.jpg + KEY.cls (``label="cls"``) or KEY.json (``label="json"``,
    fields ``label`` and ``split``); the split in the shard's name (``split_in="name"``) or only in the JSON."""
    shards = []
    for split_dir in sorted(p for p in data.iterdir() if p.is_dir()):
        images = sorted(split_dir.glob("*/*.jpg"), key=sample_key)
        for n, start in enumerate(range(0, len(images), per_shard)):
            # split_in="json": neutral names (the split is only in KEY.json), numbered across splits
            name = layout.format(split=split_dir.name, n=n) if split_in == "name" else f"{len(shards):05d}.tar"
            path = out / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(path, "w") as tar:
                for image in images[start:start + per_shard]:
                    key = sample_key(image)
                    _add(tar, f"{key}.jpg", image.read_bytes())
                    if label == "cls":
                        _add(tar, f"{key}.cls", image.parent.name.encode())
                    else:
                        _add(tar, f"{key}.json", json.dumps({"label": image.parent.name, "split": split_dir.name,
                                                             "url": f"http://example.org/{image.name}"}).encode())
            shards.append(path)
    return shards
