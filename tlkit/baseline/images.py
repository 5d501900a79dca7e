"""The images the scratch baseline trains and evaluates on.

Training images are decoded once, in worker processes, when training starts:
that pass finds the files that cannot be decoded (they are skipped and
reported, as ``tlkit embed`` does) and keeps the decoded pixels in memory up
to a budget, so later epochs only crop, flip and normalise. The evaluation
transform is deterministic, so evaluation images are transformed once and
their tensors reused every epoch (again within the budget; anything over it
is read from disk when needed).

Augmentation is a pure function of (seed, epoch, image index): each sample
seeds its own random stream, so the result does not depend on the number of
workers, and a resumed run sees exactly the crops an uninterrupted one sees.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from tqdm.auto import tqdm

from tlkit.data.decode import load_rgb
from tlkit.data.reader import DecodedFiles, read_batches
from tlkit.data.transforms import TransformSpec
from tlkit.errors import BadImage, DataError
from tlkit.signals import loader_batches, worker_options


@dataclass
class ImageSet:
    """One split: files relative to the data root, their labels, and what is held in memory."""

    root: Path
    paths: list[str]  # relative to the data root (POSIX), as the feature cache stores them
    labels: np.ndarray  # int64
    pixels: list[np.ndarray | None] = field(default_factory=list)  # decoded uint8 RGB, None: read from disk
    tensors: torch.Tensor | None = None  # eval-transformed images, when they fit in memory

    def __len__(self) -> int:
        return len(self.paths)

    def file(self, i: int) -> str:
        return str(self.root / self.paths[i])


def augmentation(spec: TransformSpec) -> T.Compose:
    """The PyTorch transfer-learning tutorial's training transform, at the spec's crop size and normalisation."""
    return T.Compose([
        T.RandomResizedCrop(spec.crop, interpolation=T.InterpolationMode(spec.interpolation), antialias=spec.antialias),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(spec.mean, spec.std),
    ])


def augmentation_description(spec: TransformSpec) -> dict:
    return {"random_resized_crop": spec.crop, "scale": [0.08, 1.0], "ratio": [3 / 4, 4 / 3],
            "horizontal_flip": 0.5, "interpolation": spec.interpolation, "mean": list(spec.mean), "std": list(spec.std)}


_ORDER_STREAM = 1 << 40  # a stream id no image index reaches


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """An independent random stream for each (run seed, epoch, image)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of the training images in one epoch (seeded, so a resume replays it)."""
    generator = torch.Generator().manual_seed(sample_seed(seed, epoch, _ORDER_STREAM))
    return torch.randperm(n, generator=generator).tolist()


# -- the decode pass ------------------------------------------------------------------------------

def _as_list(samples):
    return samples


def decode_training_set(root, paths, labels, *, workers, max_pixels, budget_bytes, progress) -> tuple[ImageSet, list]:
    """Decode every image once; keep the pixels within ``budget_bytes``; return (set, [(path, reason)])."""
    root = Path(root)
    files = [str(root / p) for p in paths]
    loader = DataLoader(DecodedFiles(files, max_pixels, convert=np.asarray), batch_size=8, collate_fn=_as_list,
                        **worker_options(workers))
    pixels: list[np.ndarray | None] = [None] * len(files)
    bad: dict[int, str] = {}
    used = 0
    with tqdm(total=len(files), desc="decode train", unit="img", disable=not progress, leave=False) as bar, \
            loader_batches(loader) as batches:  # the workers end with this block, however it ends
        for batch in batches:
            for i, array, err in batch:
                if err is not None:
                    bad[i] = err
                elif used + array.nbytes <= budget_bytes:
                    pixels[i], used = array, used + array.nbytes
            bar.update(len(batch))
    keep = [i for i in range(len(files)) if i not in bad]
    kept = ImageSet(root, [paths[i] for i in keep], np.asarray(labels, dtype=np.int64)[keep], [pixels[i] for i in keep])
    return kept, [(paths[i], bad[i]) for i in sorted(bad)]


def prepare_eval_set(root, paths, labels, spec: TransformSpec, *, workers, max_pixels, budget_bytes,
                     progress) -> tuple[ImageSet, list]:
    """Transform every evaluation image once; keep the tensors if they fit ``budget_bytes``."""
    root = Path(root)
    files = [str(root / p) for p in paths]
    per_image = 3 * spec.crop * spec.crop * 4
    hold = len(files) * per_image <= budget_bytes
    chunks, kept_idx, bad = [], [], {}
    with tqdm(total=len(files), desc="decode eval", unit="img", disable=not progress, leave=False) as bar, \
            closing(read_batches(files, spec, batch_size=32, workers=workers, max_pixels=max_pixels)) as batches:
        for batch in batches:
            kept_idx.extend(batch.indices)
            bad.update(dict(batch.errors))
            if hold and len(batch.indices):
                chunks.append(batch.images)
            bar.update(len(batch.indices) + len(batch.errors))
    eval_set = ImageSet(root, [paths[i] for i in kept_idx], np.asarray(labels, dtype=np.int64)[kept_idx])
    if hold:
        eval_set.tensors = torch.cat(chunks) if chunks else torch.empty(0, 3, spec.crop, spec.crop)
    return eval_set, [(paths[i], bad[i]) for i in sorted(bad)]


# -- per-epoch loading ------------------------------------------------------------------------------

class AugmentedImages(Dataset):
    """Training samples for one epoch: decoded pixels (memory or disk) through the seeded augmentation."""

    def __init__(self, images: ImageSet, augment, seed: int, epoch: int, max_pixels: int | None):
        self.images, self.augment, self.seed, self.epoch, self.max_pixels = images, augment, seed, epoch, max_pixels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        array = self.images.pixels[i] if self.images.pixels else None
        try:
            image = Image.fromarray(array) if array is not None else load_rgb(self.images.file(i), self.max_pixels)
        except BadImage as exc:  # the file changed since training started
            return None, int(self.images.labels[i]), f"{self.images.paths[i]}: {exc}"
        with torch.random.fork_rng(devices=[]):  # a private stream: the global generator is left alone
            torch.manual_seed(sample_seed(self.seed, self.epoch, i))
            return self.augment(image), int(self.images.labels[i]), None


def _collate_checked(samples):
    errors = [err for _, _, err in samples if err is not None]
    if errors:
        return None, None, errors
    images = torch.stack([x for x, _, _ in samples]).contiguous(memory_format=torch.channels_last)
    return images, torch.tensor([y for _, y, _ in samples], dtype=torch.int64), []


def training_batches(images: ImageSet, augment, *, seed: int, epoch: int, batch_size: int, workers: int,
                     max_pixels: int | None, pin_memory: bool = False):
    """Yield (images, labels) for one epoch in its seeded order; a file gone bad stops with a clear error."""
    loader = DataLoader(
        AugmentedImages(images, augment, seed, epoch, max_pixels),
        batch_size=batch_size,
        sampler=epoch_order(len(images), seed, epoch),
        collate_fn=_collate_checked,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None,
        **worker_options(workers),  # workers die with this process, whatever kills it
    )
    with loader_batches(loader) as batches:  # closing this generator (or an error in it) ends the workers
        for inputs, labels, errors in batches:
            if errors:
                raise DataError(
                    f"an image became unreadable during training ({errors[0]}); finished epochs are kept: "
                    "fix or remove it, then resume with --resume"
                )
            yield inputs, labels


def eval_batches(images: ImageSet, spec: TransformSpec, *, batch_size: int, workers: int, max_pixels: int | None):
    """Yield eval-transformed batches: from memory when held, else decoded again from disk."""
    if images.tensors is not None:
        for start in range(0, len(images), batch_size):
            yield images.tensors[start:start + batch_size]
        return
    files = [images.file(i) for i in range(len(images))]
    with closing(read_batches(files, spec, batch_size=batch_size, workers=workers, max_pixels=max_pixels)) as batches:
        for batch in batches:
            if batch.errors:
                i, reason = batch.errors[0]
                raise DataError(f"an evaluation image became unreadable during training ({images.paths[i]}: "
                                f"{reason}); finished epochs are kept: fix or remove it, then resume with --resume")
            yield batch.images
