"""Synthetic image files for the tests: every PIL mode, EXIF rotation, and broken files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def gradient(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An RGB uint8 image with structure (so orientation and colour matter to features)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    noise = rng.integers(0, 40, size=img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def save_mode(path: Path, mode: str, size=(64, 48), seed: int = 0) -> Path:
    """Save an image of PIL ``mode`` to ``path`` (format from the extension)."""
    rgb = Image.fromarray(gradient(*size, seed=seed))
    if mode == "I;16":
        arr = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
        im = Image.fromarray(arr)  # uint16 -> mode "I;16"
    elif mode == "P":
        im = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode == "LA":
        im = rgb.convert("LA")
    else:
        im = rgb.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def save_exif_rotated(path: Path, orientation: int = 6, size=(64, 48)) -> tuple[Path, np.ndarray]:
    """A JPEG stored sideways with an EXIF orientation tag; returns the upright pixels it should give."""
    upright = gradient(*size, seed=3)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # orientation 6 undoes this
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, exif=exif, quality=100, subsampling=0)
    return path, upright


def save_truncated(path: Path, source: Path | None = None) -> Path:
    if source is None:
        source = save_mode(path.with_name("full-" + path.name), "RGB", size=(256, 256))
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    if source.name.startswith("full-"):
        source.unlink()
    return path


def save_zero_bytes(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def save_not_an_image(path: Path) -> Path:
    path.write_text("this is a text file with an image extension\n")
    return path


def save_bomb(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 16)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def make_class_folder(root: Path, n: int, seed: int = 0, size=(80, 60)) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    return [save_mode(root / f"img{seed}_{i:03d}.png", "RGB", size=size, seed=seed * 1000 + i) for i in range(n)]
