"""The provenance of cached features: one typed value from the cache to the run folder.

:class:`Provenance` is what a cache records about where its features came from (root attributes,
``tlkit/cache/schema.py``), what a part manifest records about an unfinished embed, and what
``fit-head`` stores in a run's ``config.json`` (``cache_provenance``, read back as this type by
``tlkit/runs.py``). It lives here, below both, so that neither imports the other. Attributes older
files lack mean :data:`PROVENANCE_DEFAULTS`, written once, here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

# The fields whose equality means "the same feature space": caches that differ in
# any of them must never be appended to or merged with each other.
# ``precision`` and the int8 calibration digest are part of it: the same weights at bf16 or
# int8 give other numbers (docs/precision.md), and an int8 network is fixed only with its
# activation scales. The calibration itself is compared through its sha256.
# ``views`` is not the centre crops' space, but what the file holds beside them: one setting per cache.
FEATURE_SPACE_FIELDS = ("backbone", "layer", "pooling", "weights_sha256", "transform", "feature_dim",
                        "precision", "int8_calibration_sha256", "views")

# Attributes added after schema version 1 was published, with the value a cache written
# before them means: a cache without ``precision`` was embedded in float32, uncalibrated; one
# without ``pooling`` or ``views`` holds resnet18's penultimate features (the network's own pool,
# nothing pooled by tlkit) and no augmented views. The one place these defaults are written:
# caches, part manifests and run folders are all read through :meth:`Provenance.from_attrs`.
PROVENANCE_DEFAULTS = {"backbone": "resnet18", "layer": "avgpool", "pooling": "none", "precision": "fp32",
                       "int8_calibration": "", "int8_calibration_sha256": "", "views": ""}


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
    # "none": the layer's output is already one vector per image (the network's own pool, a class
    # token); "avg": tlkit averaged a spatial (N, C, H, W) or token (N, T, C) output (tlkit.embed.backbones).
    pooling: str = "none"
    # --views K --augment NAME: tlkit.data.views.ViewSpec.to_json(); "" (and absent in the file) = no views.
    views: str = ""

    def to_attrs(self) -> dict:
        out = asdict(self)
        if not self.views:  # a cache without views keeps the attributes every cache has recorded
            del out["views"]
        return out

    @classmethod
    def from_attrs(cls, attrs, lenient: bool = False) -> "Provenance":
        """From a cache's root attributes, a part manifest or a run's ``cache_provenance`` (:meth:`as_dict`).

        Attributes older files lack get :data:`PROVENANCE_DEFAULTS`; ``lenient`` (run folders, which
        only record) gives other missing ones an empty value instead of a KeyError.
        """
        values = {}
        for f in fields(cls):
            if f.name in attrs:
                value = attrs[f.name]
            elif f.name in PROVENANCE_DEFAULTS:
                value = PROVENANCE_DEFAULTS[f.name]
            elif lenient:
                value = 0 if f.type == "int" else ""
            else:
                raise KeyError(f.name)
            if f.name in ("transform", "views") and isinstance(value, dict):  # as_dict() spells them out
                value = json.dumps(value, sort_keys=True)
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
        try:
            out["transform"] = json.loads(self.transform)
        except ValueError:  # a run folder that recorded none
            pass
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

    def describe(self) -> str:
        """One phrase naming the feature space, e.g. ``resnet50 layer3 (avg-pooled, 1024-d), random:seed=0 at int8``."""
        layer = "" if (self.backbone, self.layer) == ("resnet18", "avgpool") else f" {self.layer}"
        pooled = "avg-pooled, " if self.pooling == "avg" else ""
        at = f" at {self.precision}" if self.precision != "fp32" else ""
        views = f", {self.view_count} views" if self.views else ""
        return f"{self.backbone}{layer} ({pooled}{self.feature_dim}-d{views}), {self.weights_id}{at}"


def _views_text(text: str) -> str:
    if not text:
        return "none"
    raw = json.loads(text)
    return f"--views {raw['k']} --augment {raw['augment']}"


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."
