"""Runner: reader -> mapper -> writer over one list of images (one shard)."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass

from tlkit.data.reader import read_batches
from tlkit.data.transforms import TransformSpec
from tlkit.data.views import VIEW_SPLITS, ViewSpec
from tlkit.embed.mapper import FeatureMapper, default_batch_size
from tlkit.embed.writer import PartWriter


def _glibc_malloc_trim() -> Callable[[], None]:
    """``malloc_trim(0)`` where the C library is glibc, else a no-op.

    Why: every batch allocates and frees tens of MiB of activations from several
    threads; glibc keeps freed pieces of its heaps, fragmented, and the process grew
    by ~0.9 GiB over 2,000 images (bench/bench_embed.py, 1x vs 10x images). Handing
    the free memory back every few batches keeps peak memory flat; every batch cost
    8% of the throughput, every TRIM_EVERY batches costs next to nothing.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


release_free_memory = _glibc_malloc_trim()
TRIM_EVERY = 16  # batches


@dataclass(frozen=True)
class WorkItem:
    """An image to embed: where to read it and what to record for it."""

    file: str  # absolute (or cwd-relative) path to open, or a tlkit.data.shards.TarMember (bytes in a tar shard)
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
    batch_size: int | None,
    workers: int,
    max_pixels: int | None,
    on_progress: Callable[[int], None] | None = None,
    views: ViewSpec | None = None,
) -> ShardStats:
    """Embed ``items`` in order; bad files are recorded as skipped, not raised.

    ``batch_size`` None: the default of the mapper's device (resolved here, where the device is known,
    also on a Ray actor). ``views``: the items of the training splits (:data:`VIEW_SPLITS`) also get
    their K views, seeded by their path.
    """
    stats = ShardStats()
    batches = read_batches(
        [it.file for it in items], spec, batch_size or default_batch_size(mapper.device), workers, max_pixels,
        device=mapper.device, views=views,
        view_keys=[it.path if it.split in VIEW_SPLITS else None for it in items] if views else None,
    )
    # Closed on every way out (a failing mapper or writer, a full disk, an interruption): the decoding
    # workers stop here, not when the interpreter exits (where they used to keep it waiting).
    with closing(batches):
        for n, batch in enumerate(batches, 1):
            batch_indices, batch_errors = batch.indices, batch.errors
            if batch.indices:
                features, view_rows = batch.views_of(mapper(batch.images))  # one forward pass: centre crops and views
                rows = [items[i] for i in batch.indices]
                writer.add(features, [r.label for r in rows], [r.path for r in rows], [r.split for r in rows],
                           views=view_rows if views else None)
            for i, reason in batch.errors:
                writer.add_skipped(items[i].path, items[i].split, reason)
            del batch
            if n % TRIM_EVERY == 0:
                release_free_memory()
            stats.embedded += len(batch_indices)
            stats.skipped += len(batch_errors)
            if on_progress:
                on_progress(len(batch_indices) + len(batch_errors))
    writer.close()
    return stats
