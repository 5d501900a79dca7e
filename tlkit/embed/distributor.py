"""Distributors: who runs the runner over which items.

``local`` runs one shard in this process (decoding in worker processes);
``ray`` (tlkit.embed.ray_backend) splits the items into shards for actors
on a Ray cluster. Both write part files into the same ``<cache>.parts/``
folder, which :func:`tlkit.embed.pipeline.embed` then publishes.
"""

from __future__ import annotations

from collections.abc import Callable

from tlkit.device import select_device
from tlkit.embed.job import EmbedJob
from tlkit.embed.mapper import FeatureMapper
from tlkit.embed.runner import ShardStats, WorkItem, run_shard
from tlkit.embed.writer import PartWriter


def run_local(job: EmbedJob, items: list[WorkItem], on_progress: Callable[[int], None]) -> ShardStats:
    mapper = FeatureMapper(job.state_dict, select_device(job.device), job.precision, job.calibration, job.backbone)
    writer = PartWriter(job.parts_dir, job.class_names, rows_per_part=job.rows_per_part)
    return run_shard(items, mapper, writer, job.spec, job.batch_size, job.workers, job.max_pixels, on_progress,
                     views=job.views)


def get_distributor(backend: str) -> Callable[[EmbedJob, list[WorkItem], Callable[[int], None]], ShardStats]:
    if backend == "local":
        return run_local
    if backend == "ray":
        from tlkit.embed.ray_backend import run_ray  # imported only here: the local path never imports Ray

        return run_ray
    raise ValueError(f"unknown backend {backend!r}")
