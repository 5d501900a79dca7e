"""Runner: reader -> mapper -> writer over one list of images (one shard)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tlkit.data.transforms import TransformSpec
from tlkit.embed.mapper import FeatureMapper
from tlkit.embed.reader import read_batches
from tlkit.embed.writer import PartWriter


@dataclass(frozen=True)
class WorkItem:
    """An image to embed: where to read it and what to record for it."""

    file: str  # absolute (or cwd-relative) path to open
    path: str  # path relative to the data root, as stored in the cache
    split: str
    label: int


@dataclass
class ShardStats:
    embedded: int = 0
    skipped: int = 0


def run_shard(
    items: list[WorkItem],
    mapper: FeatureMapper,
    writer: PartWriter,
    spec: TransformSpec,
    batch_size: int,
    workers: int,
    max_pixels: int | None,
    on_progress: Callable[[int], None] | None = None,
) -> ShardStats:
    """Embed ``items`` in order; bad files are recorded as skipped, not raised."""
    stats = ShardStats()
    batches = read_batches(
        [it.file for it in items], spec, batch_size, workers, max_pixels,
        pin_memory=mapper.device.type == "cuda",
    )
    for batch in batches:
        if batch.indices:
            features = mapper(batch.images)
            rows = [items[i] for i in batch.indices]
            writer.add(features, [r.label for r in rows], [r.path for r in rows], [r.split for r in rows])
        for i, reason in batch.errors:
            writer.add_skipped(items[i].path, items[i].split, reason)
        stats.embedded += len(batch.indices)
        stats.skipped += len(batch.errors)
        if on_progress:
            on_progress(len(batch.indices) + len(batch.errors))
    writer.close()
    return stats
