"""The HDF5 feature-cache contract (schema version 1), in one place.

Layout (see docs/cache-format.md)::

    /<split>/features   float32 (N, D)     one row per image; D = feature_dim (512 for the default resnet18)
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

from pathlib import Path

import h5py

from tlkit.provenance import FEATURE_SPACE_FIELDS, PROVENANCE_DEFAULTS, Provenance  # noqa: F401 (re-exported)

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


# The provenance (root attributes: :class:`Provenance`, its feature-space fields and the defaults of older
# files) lives in tlkit/provenance.py, below the cache, so that run folders read it as the same type.
VIEWS_DATASET = "views"  # /<split>/views: (N, K, feature_dim) float32, with the provenance attribute ``views``
