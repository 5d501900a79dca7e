"""Finding images on disk and turning them into normalised tensors."""

from tlkit.data.decode import load_rgb
from tlkit.data.discovery import (
    ALL_SPLIT,
    IMAGE_EXTENSIONS,
    SPLIT_NAMES,
    DataIndex,
    ImageItem,
    discover,
    find_images,
)
from tlkit.data.transforms import TransformSpec

__all__ = [
    "ALL_SPLIT",
    "IMAGE_EXTENSIONS",
    "SPLIT_NAMES",
    "DataIndex",
    "ImageItem",
    "TransformSpec",
    "discover",
    "find_images",
    "load_rgb",
]
