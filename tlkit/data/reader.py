"""Reader: decode images in worker processes, in batches; normalise each batch where it is used.

A file that fails to decode does not stop the batch: it comes back as an
error entry (index, reason) next to the tensors of the good files. Every pass
over image files works this way, on one dataset (:class:`DecodedFiles`): the
embedding's reader (:func:`read_batches`), the check of ``embed --strict``
(:func:`check_files`), ``predict``, and the scratch baseline's decode pass.
Here, in the data layer, so that stage one, the baseline and ``predict`` share
it without importing each other.

The workers hand over uint8 pixels (resized and cropped); the batch is turned
into normalised float32 in the consuming process, on the device given, by
:meth:`TransformSpec.normalize` (why, and why the numbers are the same:
tlkit/data/transforms.py).

Workers are forked torch ``DataLoader`` processes. They are bound to the
process that starts them (:func:`tlkit.signals.worker_options`: they die
with it, whatever kills it, and are shut down when the generator that owns
them is closed or left by an exception) and never hold a cache lock: the
lock's file descriptor is closed in every forked child (:mod:`tlkit.cache.lock`).
Callers close :func:`read_batches` when they stop early
(``with contextlib.closing(read_batches(...)) as batches:``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch.utils.data import DataLoader, Dataset

from tlkit.data.decode import load_rgb
from tlkit.data.transforms import TransformSpec
from tlkit.data.views import ViewSpec
from tlkit.errors import BadImage
from tlkit.signals import loader_batches, worker_options


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


class DecodedFiles(Dataset):
    """Image files decoded one by one: item ``i`` is ``(i, convert(image), None)``, or ``(i, None, reason)``
    when file ``i`` cannot be decoded (:class:`~tlkit.errors.BadImage`), so one bad file never stops a batch.

    ``load(path, max_pixels)`` decodes (default :func:`~tlkit.data.decode.load_rgb`); ``convert`` turns
    the image into what the worker hands over (default: nothing, for a pass that only checks the files).
    """

    def __init__(self, files: list[str], max_pixels: int | None, convert=None, load=load_rgb):
        self.files = files
        self.max_pixels = max_pixels
        self.convert = convert
        self.load = load

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            image = self.load(self.files[i], self.max_pixels)
            return i, self.convert(image) if self.convert is not None else None, None
        except BadImage as exc:
            return i, None, str(exc)


class _DecodedWithViews(DecodedFiles):
    """:class:`DecodedFiles` handing over ``(centre pixels, views)``: file ``i`` also gets the views seeded by
    ``keys[i]`` (None: no views), cut from the same decoded image."""

    def __init__(self, files: list[str], max_pixels: int | None, spec: TransformSpec, views: ViewSpec,
                 keys: list[str | None]):
        super().__init__(files, max_pixels, convert=spec.build_pixels(), load=spec.load)
        self.views, self.keys = views.build_pixels(spec), keys

    def __getitem__(self, i: int):
        try:
            image = self.load(self.files[i], self.max_pixels)  # decoded once for the centre crop and the views
            key = self.keys[i]
            return i, (self.convert(image), None if key is None else self.views(image, key)), None
        except BadImage as exc:
            return i, None, str(exc)


def _collate(samples) -> Batch:
    good = [(i, *(x if isinstance(x, tuple) else (x, None))) for i, x, err in samples if err is None]  # (i, pixels, views)
    views = [v for _, _, v in good if v is not None]
    images = torch.stack([x for _, x, _ in good]) if good else torch.empty(0, dtype=torch.uint8)
    return Batch(
        indices=[i for i, _, _ in good],
        images=torch.cat([images, *views]) if views else images,
        errors=[(i, err) for i, _, err in samples if err is not None],
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
        _DecodedWithViews(files, max_pixels, spec, views, view_keys) if by_crops
        else DecodedFiles(files, max_pixels, convert=spec.build_pixels(), load=spec.load),
        **batching,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
        **worker_options(workers),
    )
    with loader_batches(loader) as batches:  # closing this generator (or an error in it) ends the workers
        for batch in batches:
            yield replace(batch, images=spec.normalize(batch.images.to(device, non_blocking=True))) if batch.indices else batch


def _errors_only(samples):
    return [(i, err) for i, _, err in samples if err is not None]


def check_files(files: list[tuple[str, str]], workers: int, max_pixels: int | None) -> list[tuple[str, str]]:
    """Fully decode every (file, shown-name) pair; return (shown-name, reason) of the bad ones."""
    loader = DataLoader(
        DecodedFiles([f for f, _ in files], max_pixels), batch_size=16, collate_fn=_errors_only,
        **worker_options(workers),
    )
    with loader_batches(loader) as batches:
        return [(files[i][1], why) for batch in batches for i, why in batch]
