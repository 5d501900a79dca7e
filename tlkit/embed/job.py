"""What a distributor is given: one embed job, the same for the local and the Ray backend.

Its own module so that both distributors import it and neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tlkit.data.transforms import TransformSpec
from tlkit.data.views import ViewSpec


@dataclass(frozen=True)
class RayOptions:
    """The settings of ``--backend ray`` (the local backend ignores them)."""

    address: str | None = None  # --ray-address: the cluster to join [default: the one this process joined, else Ray's]
    shards: int | None = None  # --shards [default: 2 per worker slot]
    gpus_per_worker: float = 0.0  # --gpus-per-worker: GPUs each actor reserves; 0 runs actors on CPUs


@dataclass
class EmbedJob:
    """Everything a distributor needs to embed items into part files."""

    state_dict: dict
    spec: TransformSpec
    parts_dir: Path
    class_names: list[str]
    batch_size: int | None  # None: the mapper device's default (tlkit.embed.mapper.default_batch_size)
    workers: int
    device: str
    max_pixels: int | None
    rows_per_part: int = 2048  # rows per atomic part file: the most an interruption can lose
    ray: RayOptions = RayOptions()
    precision: str = "fp32"  # tlkit.embed.precision.PRECISIONS
    calibration: object = None  # tlkit.embed.precision.Int8Calibration: int8 with calibrated weights, one for every shard
    backbone: object = None  # tlkit.embed.backbones.Backbone (network and layer); None: resnet18's default
    views: ViewSpec | None = None  # --views K --augment NAME: K views of every training image, beside its centre crop
