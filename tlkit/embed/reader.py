"""Reader: decode images in worker processes, in batches; normalise each batch where it is used.

A file that fails to decode does not stop the batch: it comes back as an
error entry (index, reason) next to the tensors of the good files.

The workers hand over uint8 pixels (resized and cropped); the batch is turned
into normalised float32 in the consuming process, on the device given, by
:meth:`TransformSpec.normalize` (why, and why the numbers are the same:
tlkit/data/transforms.py).

Workers are forked torch ``DataLoader`` processes. They are bound to the
process that starts them (:func:`tlkit.signals.worker_init_fn`: they die
with it, whatever kills it) and never hold a cache lock: the lock's file
descriptor is closed in every forked child (:mod:`tlkit.cache.lock`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch.utils.data import DataLoader, Dataset

from tlkit.data.decode import load_rgb
from tlkit.data.transforms import TransformSpec
from tlkit.data.views import ViewSpec
from tlkit.errors import BadImage
from tlkit.signals import worker_init_fn


@dataclass
class Batch:
    indices: list[int]  # positions (in the reader's file list) of the rows of ``images``
    images: torch.Tensor  # (len(indices), 3, H, W) float32, normalised; uint8 (N, H, W, 3) pixels inside the loader
    errors: list[tuple[int, str]]  # (position, reason) of files that failed to decode
    # With views: ``images`` holds the len(indices) centre crops, then n_views[j] views of indices[j], in order.
    n_views: list[int] = field(default_factory=list)

    def views_of(self, rows):
        """``rows`` (one per row of ``images``, e.g. features) -> the centre rows, and a list of each file's
        view rows (None for a file without views)."""
        n = len(self.indices)
        out, start = [], n
        for k in self.n_views or [0] * n:
            out.append(rows[start:start + k] if k else None)
            start += k
        return rows[:n], out

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader's pinning thread (``pin_memory=True``): page-locked pixels copy to a GPU asynchronously."""
        return replace(self, images=self.images.pin_memory())


class _ImageFiles(Dataset):
    def __init__(self, files: list[str], spec: TransformSpec, max_pixels: int | None,
                 views: ViewSpec | None = None, view_keys: list[str | None] | None = None):
        self.files = files
        self.max_pixels = max_pixels
        self.spec = spec
        self.pixels = spec.build_pixels()
        self.views = views.build_pixels(spec) if views is not None else None
        self.view_keys = view_keys  # per file: the path its views are seeded by, or None for no views

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            image = self.spec.load(self.files[i], self.max_pixels)  # decoded once for the centre crop and the views
            key = self.view_keys[i] if self.views is not None else None
            return i, self.pixels(image), None if key is None else self.views(image, key), None
        except BadImage as exc:
            return i, None, None, str(exc)


def _collate(samples) -> Batch:
    good = [(i, x, v) for i, x, v, err in samples if err is None]
    views = [v for _, _, v in good if v is not None]
    images = torch.stack([x for _, x, _ in good]) if good else torch.empty(0, dtype=torch.uint8)
    return Batch(
        indices=[i for i, _, _ in good],
        images=torch.cat([images, *views]) if views else images,
        errors=[(i, err) for i, _, _, err in samples if err is not None],
        n_views=[0 if v is None else len(v) for _, _, v in good] if views else [],
    )


def _batches_by_crops(crops: list[int], batch_size: int) -> list[list[int]]:
    """Consecutive files grouped so that each batch holds about ``batch_size`` crops (centre + views)."""
    batches, current, held = [], [], 0
    for i, n in enumerate(crops):
        current.append(i)
        held += n
        if held >= batch_size:
            batches.append(current)
            current, held = [], 0
    return batches + ([current] if current else [])


def read_batches(
    files: list[str],
    spec: TransformSpec,
    batch_size: int,
    workers: int,
    max_pixels: int | None,
    device: torch.device | str = "cpu",
    views: ViewSpec | None = None,
    view_keys: list[str | None] | None = None,
):
    """Yield :class:`Batch` objects over ``files`` in order, decoding in ``workers`` processes.

    ``images`` are normalised on ``device``; for a GPU the pixels travel pinned and as uint8.
    ``views``: files whose ``view_keys`` entry is a path also get ``views.k`` augmented views, seeded by
    that path, from the same decoded image; a batch then holds about ``batch_size`` crops in all.
    """
    device = torch.device(device)
    by_crops = views is not None and any(k is not None for k in view_keys)
    batching = (
        {"batch_sampler": _batches_by_crops([1 + (views.k if k is not None else 0) for k in view_keys], batch_size)}
        if by_crops else {"batch_size": batch_size, "shuffle": False}
    )
    loader = DataLoader(
        _ImageFiles(files, spec, max_pixels, views if by_crops else None, view_keys),
        **batching,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
        worker_init_fn=worker_init_fn(),
    )
    for batch in loader:
        yield replace(batch, images=spec.normalize(batch.images.to(device, non_blocking=True))) if batch.indices else batch


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
