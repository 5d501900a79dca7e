"""Reader: decode and transform images in worker processes, in batches.

A file that fails to decode does not stop the batch: it comes back as an
error entry (index, reason) next to the tensors of the good files.

Workers are forked torch ``DataLoader`` processes. They are bound to the
process that starts them (:func:`tlkit.signals.worker_init_fn`: they die
with it, whatever kills it) and never hold a cache lock: the lock's file
descriptor is closed in every forked child (:mod:`tlkit.cache.lock`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from tlkit.data.decode import load_rgb
from tlkit.data.transforms import TransformSpec
from tlkit.errors import BadImage
from tlkit.signals import worker_init_fn


@dataclass
class Batch:
    indices: list[int]  # positions (in the reader's file list) of the rows of ``images``
    images: torch.Tensor  # (len(indices), 3, H, W)
    errors: list[tuple[int, str]]  # (position, reason) of files that failed to decode


class _ImageFiles(Dataset):
    def __init__(self, files: list[str], spec: TransformSpec, max_pixels: int | None):
        self.files = files
        self.spec = spec
        self.max_pixels = max_pixels
        self.transform = spec.build()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return i, self.transform(load_rgb(self.files[i], self.max_pixels)), None
        except BadImage as exc:
            return i, None, str(exc)


def _collate(samples) -> Batch:
    good = [(i, x) for i, x, err in samples if err is None]
    images = torch.stack([x for _, x in good]) if good else torch.empty(0)
    return Batch(
        indices=[i for i, _ in good],
        images=images,
        errors=[(i, err) for i, _, err in samples if err is not None],
    )


def read_batches(
    files: list[str],
    spec: TransformSpec,
    batch_size: int,
    workers: int,
    max_pixels: int | None,
    pin_memory: bool = False,
):
    """Yield :class:`Batch` objects over ``files`` in order, decoding in ``workers`` processes."""
    loader = DataLoader(
        _ImageFiles(files, spec, max_pixels),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
        worker_init_fn=worker_init_fn(),
    )
    yield from loader


class _CheckFiles(Dataset):
    def __init__(self, files: list[str], max_pixels: int | None):
        self.files = files
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            load_rgb(self.files[i], self.max_pixels)
            return None
        except BadImage as exc:
            return i, str(exc)


def _drop_good(samples):
    return [s for s in samples if s is not None]


def check_files(files: list[tuple[str, str]], workers: int, max_pixels: int | None) -> list[tuple[str, str]]:
    """Fully decode every (file, shown-name) pair; return (shown-name, reason) of the bad ones."""
    loader = DataLoader(
        _CheckFiles([f for f, _ in files], max_pixels), batch_size=16, num_workers=workers,
        collate_fn=_drop_good, worker_init_fn=worker_init_fn(),
    )
    return [(files[i][1], why) for batch in loader for i, why in batch]
