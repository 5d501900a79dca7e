"""Decode any image file PIL can read into an upright RGB image.

Every failure (unreadable, truncated, zero-byte, not an image, decompression
bomb, a dangling symbolic link, no read permission, a folder named like an
image) becomes :class:`tlkit.errors.BadImage` with a short reason, so callers
can skip the file and report it instead of crashing.
"""

from __future__ import annotations

import os
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tlkit.errors import BadImage

# PIL's own default (about 89 megapixels); above it a file is treated as a
# decompression bomb instead of being allowed to eat the machine's memory.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS

_HIGH_BIT_DEPTH = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in _HIGH_BIT_DEPTH:
        # PIL's convert("RGB") clips 16-bit values at 255; rescale to the full range instead.
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(scaled.round().astype(np.uint8)).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # avoids PIL's warning for palette images with transparency
    return im.convert("RGB")


def load_rgb(path, max_pixels: int | None = DEFAULT_MAX_PIXELS, draft: int | None = None) -> Image.Image:
    """Open ``path``, apply its EXIF orientation and return it as RGB.

    ``draft``: for a JPEG at least twice this size on both sides, let libjpeg decode it at the
    largest DCT scale (1/2, 1/4, 1/8) that keeps both sides at ``draft`` or more (PIL's
    ``Image.draft``): a 4000x3000 photo decodes as 500x375, many times faster, in other
    pixels than a full decode followed by the same resize. Other formats are decoded whole.
    """
    opener = getattr(path, "open_member", None)
    if opener is not None:  # a member of a tar shard (tlkit.data.shards.TarMember): its bytes, or BadImage
        path = opener()
    not_a_file = _not_a_regular_file(path)
    if not_a_file:
        raise BadImage(not_a_file)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = max_pixels
            try:
                with Image.open(path) as im:
                    if max_pixels is not None and im.width * im.height > max_pixels:
                        raise BadImage(
                            f"decompression bomb: {im.width}x{im.height} pixels "
                            f"exceeds the limit of {max_pixels}"
                        )
                    if draft is not None and im.format == "JPEG":
                        im.draft(None, (draft, draft))  # a square request: the EXIF rotation cannot matter
                    im.load()
                    im = ImageOps.exif_transpose(im)
                    return _to_rgb(im)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        size = _size_or_none(path)
        raise BadImage("empty file (0 bytes)" if size == 0 else "not an image PIL can read") from None
    except PermissionError:
        raise BadImage("permission denied: the file cannot be opened for reading") from None
    except OSError as exc:
        raise BadImage(f"unreadable or truncated: {exc}") from None
    except (ValueError, SyntaxError, MemoryError, Image.DecompressionBombError) as exc:
        raise BadImage(f"cannot decode: {type(exc).__name__}: {exc}") from None


def _not_a_regular_file(path) -> str | None:
    """Why ``path`` is no image file at all, or None: checked before opening, since opening a FIFO blocks."""
    if not isinstance(path, (str, os.PathLike)):
        return None  # an open file object
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"dangling symbolic link: its target {os.readlink(path)} does not exist"
        return "file not found (deleted or moved after it was listed)"
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    if stat.S_ISDIR(mode):
        return "a folder, not an image file"
    if not stat.S_ISREG(mode):
        return "not a regular file (a pipe, socket or device)"
    return None


def _size_or_none(path) -> int | None:
    if hasattr(path, "getbuffer"):  # bytes in memory (a tar member)
        return path.getbuffer().nbytes
    try:
        return os.path.getsize(path)
    except OSError:
        return None
