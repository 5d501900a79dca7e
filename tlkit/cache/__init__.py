"""The HDF5 feature cache: its schema, reading it, and writing it atomically.

Any script can read a cache with plain h5py (see README); this package gives
the same as numpy arrays plus metadata::

    from tlkit.cache import load_cache
    cache = load_cache("cache/feats.h5")
    X_train, y_train = cache["train"].features, cache["train"].labels
"""

from tlkit.cache.reader import FeatureCache, SplitArrays, load_cache, open_h5
from tlkit.cache.schema import FEATURE_DIM, FORMAT, SCHEMA_VERSION, Provenance

__all__ = [
    "FEATURE_DIM",
    "FORMAT",
    "SCHEMA_VERSION",
    "FeatureCache",
    "Provenance",
    "SplitArrays",
    "load_cache",
    "open_h5",
]
