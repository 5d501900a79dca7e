"""Finding images on disk and turning them into normalised tensors."""

from tlkit.data.decode import load_rgb
from tlkit.data.discovery import IMAGE_EXTENSIONS, DataIndex, ImageItem, discover, find_images
from tlkit.data.transforms import TransformSpec

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataIndex",
    "ImageItem",
    "TransformSpec",
    "discover",
    "find_images",
    "load_rgb",
]
