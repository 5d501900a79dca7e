"""The HDF5 feature-cache contract (schema version 1), in one place.

Layout (see docs/cache-format.md)::

    /<split>/features   float32 (N, 512)   one row per image
    /<split>/labels     int64   (N,)       index into the root attribute class_names
    /<split>/paths      utf-8   (N,)       image path relative to the data root, sorted
    /<split>/views      float32 (N, K, 512) K augmented views per image (train/all, only with ``--views K``)
    /skipped/paths, /skipped/splits, /skipped/reasons   utf-8   files that could not be decoded

Root attributes: ``format``, ``schema_version``, ``complete``, ``splits``,
``class_names`` and the provenance fields of :class:`Provenance`.
A reader must refuse a file whose ``complete`` attribute is not true.

Splits are ``train``, ``val`` and ``test`` (a data folder with split folders)
or ``all`` (one without), always listed in that order
(:func:`tlkit.splits.ordered_splits`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import h5py

FORMAT = "tlkit-feature-cache"
PART_FORMAT = "tlkit-feature-part"  # an atomic piece of an unfinished embed (cache.h5.parts/)
SCHEMA_VERSION = 1
FEATURE_DIM = 512
SKIPPED_GROUP = "skipped"
CHUNK_ROWS = 256  # 256 rows x 2 KiB = 512 KiB chunks: inside HDF5's sweet spot of 10 KiB to 1 MiB

STR_DTYPE = h5py.string_dtype(encoding="utf-8")


def parts_dir_of(cache: str | Path) -> Path:
    """Where an embed in progress keeps its finished work: ``<cache>.parts/`` (:mod:`tlkit.cache.parts`)."""
    cache = Path(cache)
    return cache.with_name(cache.name + ".parts")


# The fields whose equality means "the same feature space": caches that differ in
# any of them must never be appended to or merged with each other.
# ``precision`` and the int8 calibration digest are part of it: the same weights at bf16 or
# int8 give other numbers (docs/precision.md), and an int8 network is fixed only with its
# activation scales. The calibration itself is compared through its sha256.
# ``views`` is not the centre crops' space, but what the file holds beside them: one setting per cache.
FEATURE_SPACE_FIELDS = ("backbone", "layer", "weights_sha256", "transform", "feature_dim",
                        "precision", "int8_calibration_sha256", "views")

# Attributes added after schema version 1 was published, with the value a cache written
# before them means: a cache without ``precision`` was embedded in float32, uncalibrated.
PROVENANCE_DEFAULTS = {"precision": "fp32", "int8_calibration": "", "int8_calibration_sha256": "", "views": ""}
VIEWS_DATASET = "views"  # /<split>/views: (N, K, FEATURE_DIM) float32, with the provenance attribute ``views``


@dataclass(frozen=True)
class Provenance:
    """Where the features came from; stored as root attributes of the cache."""

    backbone: str
    layer: str
    weights_id: str
    weights_sha256: str
    transform: str  # TransformSpec.to_json()
    feature_dim: int
    tlkit_version: str
    torch_version: str
    torchvision_version: str
    created: str  # ISO 8601, UTC, when the first rows were written
    data_root: str
    precision: str = "fp32"  # tlkit.embed.precision.PRECISIONS
    # int8 with calibrated weights (random or a file): the activation scales, computed once by the
    # first run into the cache and reused by every later one (Int8Calibration.to_json), and their
    # sha256. Empty for other precisions and for torchvision's published quantized weights.
    int8_calibration: str = ""
    int8_calibration_sha256: str = ""
    # --views K --augment NAME: tlkit.data.views.ViewSpec.to_json(); "" (and absent in the file) = no views.
    views: str = ""

    def to_attrs(self) -> dict:
        out = asdict(self)
        if not self.views:  # a cache without views keeps the attributes every cache has recorded
            del out["views"]
        return out

    @classmethod
    def from_attrs(cls, attrs) -> "Provenance":
        values = {}
        for f in fields(cls):
            value = attrs[f.name] if f.name in attrs or f.name not in PROVENANCE_DEFAULTS else PROVENANCE_DEFAULTS[f.name]
            values[f.name] = int(value) if f.type == "int" else str(value)
        return cls(**values)

    def feature_space_mismatch(self, other: "Provenance") -> list[str]:
        """Names of the feature-space fields that differ, with both values."""
        out = []
        for name in FEATURE_SPACE_FIELDS:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                if name == "views":  # the setting in words, not its JSON
                    mine, theirs = _views_text(mine), _views_text(theirs)
                out.append(f"{name}: {_short(theirs)} vs {_short(mine)}")
        return out

    def as_dict(self) -> dict:
        out = self.to_attrs()
        out["transform"] = json.loads(self.transform)
        if self.views:
            out["views"] = json.loads(self.views)
        return out

    @property
    def view_count(self) -> int:
        """K of ``--views K`` (0: no views)."""
        return int(json.loads(self.views)["k"]) if self.views else 0

    @property
    def view_splits(self) -> tuple[str, ...]:
        """The splits that hold views (tlkit.data.views.VIEW_SPLITS when they were written)."""
        return tuple(json.loads(self.views)["splits"]) if self.views else ()


def _views_text(text: str) -> str:
    if not text:
        return "none"
    raw = json.loads(text)
    return f"--views {raw['k']} --augment {raw['augment']}"


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."
