"""Augmented views of a training image, described by data so the cache can record and reproduce them.

``tlkit embed --views K --augment NAME`` stores, beside every training image's centre-crop features,
the features of K augmented crops of the same decoded image. The augmentations are torchvision's,
with the parameters of the PyTorch transfer-learning tutorial's training transform:

* ``tutorial``: ``RandomResizedCrop(224, scale=(0.08, 1.0), ratio=(3/4, 4/3), bilinear, antialias)``
  then ``RandomHorizontalFlip(p=0.5)``, on the decoded image;
* ``crop``: the RandomResizedCrop alone;
* ``flip``: ``RandomHorizontalFlip(p=0.5)`` of the centre crop (Resize 256 + CenterCrop 224): a view is
  the centre crop or its mirror image, so K > 2 adds nothing new.

Then the same ToTensor + Normalize as the centre crop (:class:`TransformSpec`), in the same two halves
(uint8 pixels in the workers, normalised per batch).

Each view is seeded by (image path relative to the data root, view index) alone
(:func:`view_seed`): torch's CPU generator is seeded with it around the torchvision call, so a resumed
embed, a Ray shard on another node and ``tlkit verify --data`` draw exactly the same crop, whatever
worker, batch or order the image lands in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

AUGMENTS = ("tutorial", "crop", "flip")
VIEW_SPLITS = ("train", "all")  # the splits a head trains on; val and test are only ever evaluated: no views
SEEDING = "sha256(path + NUL + view index)[:8], little-endian, >> 1, seeds torch's CPU generator per view"


def view_seed(path: str, view: int) -> int:
    """The seed of view ``view`` of the image at ``path`` (relative to the data root): stable across runs and machines."""
    digest = hashlib.sha256(f"{path}\0{view}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: a valid torch seed


@dataclass(frozen=True)
class ViewSpec:
    """K views per training image by augmentation ``augment`` (one of :data:`AUGMENTS`)."""

    k: int
    augment: str
    size: int = 224  # the crop size: the centre crop's
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop (crop, tutorial)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bilinear"
    antialias: bool = True
    flip_p: float = 0.5  # RandomHorizontalFlip (flip, tutorial)

    def __post_init__(self):
        if self.augment not in AUGMENTS:
            raise ValueError(f"unknown augmentation {self.augment!r} (choose {', '.join(AUGMENTS)})")
        if self.k < 1:
            raise ValueError(f"views must be at least 1, got {self.k}")

    @property
    def crops(self) -> bool:
        return self.augment in ("tutorial", "crop")

    @property
    def flips(self) -> bool:
        return self.augment in ("tutorial", "flip")

    def params(self) -> dict:
        """The exact torchvision parameters, as recorded in the cache."""
        out = {}
        if self.crops:
            out["RandomResizedCrop"] = {"size": self.size, "scale": list(self.scale), "ratio": list(self.ratio),
                                        "interpolation": self.interpolation, "antialias": self.antialias}
        else:
            out["start"] = "the centre crop (Resize + CenterCrop of the transform)"
        if self.flips:
            out["RandomHorizontalFlip"] = {"p": self.flip_p}
        return out

    def to_json(self) -> str:
        """The provenance attribute ``views``: ``{"k", "augment", "params", "splits", "seeding", "spec"}``."""
        return json.dumps({"k": self.k, "augment": self.augment, "params": self.params(), "splits": list(VIEW_SPLITS),
                           "seeding": SEEDING, "spec": asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ViewSpec | None":
        """The spec a ``views`` attribute records; None for an empty one (a cache without views)."""
        if not text:
            return None
        raw = dict(json.loads(text)["spec"])
        raw["scale"], raw["ratio"] = tuple(raw["scale"]), tuple(raw["ratio"])
        return cls(**raw)

    def describe(self) -> str:
        return f"{self.k} {self.augment} view(s) per image in {'/'.join(VIEW_SPLITS)}"

    def build_pixels(self, spec):
        """``(decoded PIL image, path) -> (k, H, W, 3) uint8``: the views, from the image decoded once.

        ``spec`` is the cache's :class:`TransformSpec` (its Resize + CenterCrop start ``flip``).
        """
        import numpy as np
        import torch
        from torchvision import transforms as T

        steps = []
        if self.crops:
            steps.append(T.RandomResizedCrop(self.size, scale=self.scale, ratio=self.ratio,
                                             interpolation=T.InterpolationMode(self.interpolation), antialias=self.antialias))
        if self.flips:
            steps.append(T.RandomHorizontalFlip(self.flip_p))
        augment = T.Compose(steps)
        start = T.Compose(spec._resize_crop()) if not self.crops else (lambda image: image)

        def views(image, path: str) -> torch.Tensor:
            base = start(image)
            out = np.empty((self.k, self.size, self.size, 3), dtype=np.uint8)
            with torch.random.fork_rng(devices=[]):  # the caller's generator is left as it was
                for v in range(self.k):
                    torch.default_generator.manual_seed(view_seed(path, v))
                    out[v] = np.asarray(augment(base), dtype=np.uint8)
            return torch.from_numpy(out)

        return views
