"""The evaluation transform, described by data so it can be stored and compared.

The cache records the spec as JSON; two caches (or a cache and a prediction)
share a feature space only if their specs are equal.
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

    def build(self):
        """The torchvision ``Compose`` (imported here: reading a cache needs no torchvision)."""
        from torchvision import transforms as T

        return T.Compose(
            [
                T.Resize(
                    self.resize,
                    interpolation=T.InterpolationMode(self.interpolation),
                    antialias=self.antialias,
                ),
                T.CenterCrop(self.crop),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TransformSpec":
        raw = json.loads(text)
        raw["mean"] = tuple(raw["mean"])
        raw["std"] = tuple(raw["std"])
        return cls(**raw)
