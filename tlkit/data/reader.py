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
process that starts them (:func:`tlkit.signals.worker_init_fn`: they die
with it, whatever kills it) and never hold a cache lock: the lock's file
descriptor is closed in every forked child (:mod:`tlkit.cache.lock`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch.utils.data import DataLoader, Dataset

from tlkit.data.decode import load_rgb
from tlkit.data.transforms import TransformSpec
from tlkit.errors import BadImage
from tlkit.signals import worker_init_fn


@dataclass
class Batch:
    indices: list[int]  # positions (in the reader's file list) of the rows of ``images``
    images: torch.Tensor  # (len(indices), 3, H, W) float32, normalised; uint8 (N, H, W, 3) pixels inside the loader
    errors: list[tuple[int, str]]  # (position, reason) of files that failed to decode

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


def _collate(samples) -> Batch:
    good = [(i, x) for i, x, err in samples if err is None]
    return Batch(
        indices=[i for i, _ in good],
        images=torch.stack([x for _, x in good]) if good else torch.empty(0, dtype=torch.uint8),
        errors=[(i, err) for i, _, err in samples if err is not None],
    )


def read_batches(
    files: list[str],
    spec: TransformSpec,
    batch_size: int,
    workers: int,
    max_pixels: int | None,
    device: torch.device | str = "cpu",
):
    """Yield :class:`Batch` objects over ``files`` in order, decoding in ``workers`` processes.

    ``images`` are normalised on ``device``; for a GPU the pixels travel pinned and as uint8.
    """
    device = torch.device(device)
    loader = DataLoader(
        DecodedFiles(files, max_pixels, convert=spec.build_pixels(), load=spec.load),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
        worker_init_fn=worker_init_fn(),
    )
    for batch in loader:
        yield replace(batch, images=spec.normalize(batch.images.to(device, non_blocking=True))) if batch.indices else batch


def _errors_only(samples):
    return [(i, err) for i, _, err in samples if err is not None]


def check_files(files: list[tuple[str, str]], workers: int, max_pixels: int | None) -> list[tuple[str, str]]:
    """Fully decode every (file, shown-name) pair; return (shown-name, reason) of the bad ones."""
    loader = DataLoader(
        DecodedFiles([f for f, _ in files], max_pixels), batch_size=16, num_workers=workers,
        collate_fn=_errors_only, worker_init_fn=worker_init_fn(),
    )
    return [(files[i][1], why) for batch in loader for i, why in batch]
