"""Helpers for the head tests (no tests here): separable feature blobs and hand-written cache files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlkit.cache.schema import FEATURE_DIM, FORMAT, SCHEMA_VERSION, Provenance
from tlkit.cache.writer import atomic_h5, write_root_attrs, write_skipped, write_split


def blobs(n: int, n_classes: int, seed: int, separation: float = 4.0, noise: float = 0.5):
    """Linearly separable 512-d features: one Gaussian blob per class around fixed centres."""
    centres = np.random.default_rng(100 + n_classes).normal(size=(n_classes, FEATURE_DIM))
    centres *= separation / np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.arange(n) % n_classes
    X = np.random.default_rng(seed).normal(size=(n, FEATURE_DIM)) * noise + centres[y]
    return X.astype(np.float32), y.astype(np.int64)


def provenance() -> Provenance:
    return Provenance(
        backbone="resnet18", layer="avgpool", weights_id="random:seed=0", weights_sha256="0" * 64,
        transform='{"resize": 256, "crop": 224}', feature_dim=FEATURE_DIM, tlkit_version="0.1.0",
        torch_version="x", torchvision_version="x", created="2025-01-01T00:00:00+00:00", data_root="/data",
    )


def write_cache(path: Path, splits: dict, class_names, *, complete: bool = True, schema_version: int = SCHEMA_VERSION,
                fmt: str = FORMAT) -> Path:
    """A cache file with the given ``{split: (features, labels)}``; paths are made up per row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_h5(path) as f:
        write_root_attrs(f, format=fmt, schema_version=schema_version, complete=False, splits=list(splits),
                         class_names=list(class_names), **provenance().to_attrs())
        for split, (X, y) in splits.items():
            paths = [f"{split}/{class_names[label]}/{i:05d}.jpg" for i, label in enumerate(y)]
            write_split(f, split, X, y, paths)
        write_skipped(f, [])
        f.attrs["complete"] = complete
    return path


def random_weight_features(n: int, n_classes: int, seed: int, offset: float = 2.0, separation: float = 2.0,
                           noise: float = 0.1):
    """Separable blobs riding on a large shared positive offset, as a ResNet-18 with random weights gives.

    Random weights map every image to about the same all-positive vector (mean 2.0 per dimension, each
    image within a distance of about 3 of the others: measured on sklearn's 8x8 digits at 224 px). A
    standardizing classifier (logreg) separates these at once; the quantum and bottleneck heads at the
    paper's defaults stay at the loss of predicting the class frequencies (issue 21).
    """
    X, y = blobs(n, n_classes, seed, separation=separation, noise=noise)
    shared = offset * np.abs(np.random.default_rng(7).normal(size=FEATURE_DIM))
    return (X + shared).astype(np.float32), y
