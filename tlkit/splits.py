"""The names of the splits and their one order.

A data root holds split folders (``train``, ``val``, ``test``) or none (its one
split is then ``all``). Discovery, the cache's attributes and files, merges and
every listing name the splits in this order. Here, below both the data layer
(the folder layout defines them) and the cache (which stores what discovery
found), so that neither imports the other: reading a cache needs no image code.
"""

from __future__ import annotations

SPLIT_NAMES = ("train", "val", "test")  # split folders a data root may hold
ALL_SPLIT = "all"  # the one split of a data root without split folders
SPLIT_ORDER = (*SPLIT_NAMES, ALL_SPLIT)  # the order of splits everywhere: attributes, files, listings


def ordered_splits(present) -> list[str]:
    """The known splits among ``present``, in :data:`SPLIT_ORDER`."""
    present = set(present)
    return [s for s in SPLIT_ORDER if s in present]
