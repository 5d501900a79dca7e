"""The evaluation transform, described by data so it can be stored and compared.

The cache records the spec as JSON; two caches (or a cache and a prediction)
share a feature space only if their specs are equal.

:meth:`TransformSpec.build` is the definition: torchvision's Resize, CenterCrop,
ToTensor and Normalize on a PIL image. The embedding runs it in two halves,
:meth:`~TransformSpec.build_pixels` in the decoding workers (PIL resize and crop,
then the uint8 pixels as they are) and :meth:`~TransformSpec.normalize` on whole
batches where the network runs. Why: the workers then hand over a quarter of the
bytes (uint8 instead of float32) through shared memory, and on a GPU the arithmetic
runs there, after a uint8 copy from pinned memory. On a CPU it is a wash, measured
(``bench/bench_embed.py --profile`` and by hand, 2 cores): ToTensor + Normalize cost
0.33 ms of a worker's 1.77 ms per image on one core; the batched pass costs 0.26 ms
per image on 2 threads, and saves the float copy into channels_last that the
network needed before. The arithmetic is the same element-wise float32 operations
in the same order, so the two routes give bit-identical tensors (tests/test_data.py
checks it on real photos).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TransformSpec:
    """Resize the short side, center-crop, scale to [0, 1], normalise per channel."""

    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = field(default=IMAGENET_MEAN)
    std: tuple[float, ...] = field(default=IMAGENET_STD)
    antialias: bool = True
    # Opt-in (``tlkit embed --fast-decode``): JPEGs at least twice the resize target are decoded at a
    # reduced DCT scale (1/2, 1/4 or 1/8; libjpeg's own downscaling, far cheaper than a full decode),
    # never below the resize target, then resized as usual. Other pixels than a full decode, hence
    # part of the spec and the feature space. See tlkit/data/decode.py.
    jpeg_draft: bool = False

    def load(self, path, max_pixels: int | None):
        """The upright RGB image these pixels start from (:func:`tlkit.data.decode.load_rgb`)."""
        from tlkit.data.decode import load_rgb

        return load_rgb(path, max_pixels, draft=self.resize if self.jpeg_draft else None)

    def _resize_crop(self) -> list:
        """Resize the short side, center-crop: the PIL steps both halves of the transform start with."""
        from torchvision import transforms as T

        return [
            T.Resize(self.resize, interpolation=T.InterpolationMode(self.interpolation), antialias=self.antialias),
            T.CenterCrop(self.crop),
        ]

    def build(self):
        """The torchvision ``Compose`` (imported here: reading a cache needs no torchvision)."""
        from torchvision import transforms as T

        return T.Compose([*self._resize_crop(), T.ToTensor(), T.Normalize(self.mean, self.std)])

    def build_pixels(self):
        """The first half of :meth:`build`: PIL image -> its resized, center-cropped uint8 pixels, (H, W, 3)."""
        import numpy as np
        import torch
        from torchvision import transforms as T

        resize_crop = T.Compose(self._resize_crop())
        return lambda image: torch.from_numpy(np.array(resize_crop(image), dtype=np.uint8))

    def normalize(self, pixels):
        """The second half of :meth:`build` on a batch: (N, H, W, 3) uint8 -> (N, 3, H, W) float32.

        The result is a channels_last view (the layout the backbone runs fastest on), on the device
        of ``pixels``; its values are exactly ToTensor's ``/ 255`` and then Normalize's ``- mean``, ``/ std``.
        """
        import torch

        # In (N, H, W, C) order, where the channel is the innermost dimension of both the pixels and the
        # per-channel constants: twice as fast as broadcasting them over a channels_last view (measured).
        images = pixels.to(torch.float32).div(255)
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=images.device)
        std = torch.as_tensor(self.std, dtype=torch.float32, device=images.device)
        return images.sub_(mean).div_(std).permute(0, 3, 1, 2)

    def to_json(self) -> str:
        fields = asdict(self)
        if not self.jpeg_draft:  # the default pixels keep the text every cache has recorded: it is compared
            del fields["jpeg_draft"]
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TransformSpec":
        raw = json.loads(text)
        raw["mean"] = tuple(raw["mean"])
        raw["std"] = tuple(raw["std"])
        return cls(**raw)
