"""Stage one: push every image once through the frozen backbone into the cache.

The pipeline has the roles of clip-retrieval's inference: a **reader**
(decoding in worker processes), a **mapper** (the frozen ResNet-18), a
**writer** (atomic part files), composed by a **runner** per shard and
driven by a **distributor** (local, or Ray). :func:`embed` plans the work
and publishes the finished cache.

The reader itself is :mod:`tlkit.data.reader` (``predict`` and the scratch
baseline decode images with it too).

``tlkit embed`` and ``tlkit verify`` import this package (their commands are
:mod:`tlkit.embed.cli`); ``embed`` must set ``OMP_WAIT_POLICY`` before torch
loads, and ``verify`` without ``--data`` needs no torch at all: so
:func:`embed` and :class:`EmbedResult` (which import torch) are loaded on
first use, not here.
"""

from __future__ import annotations


def __getattr__(name):
    if name in ("embed", "EmbedResult"):
        from tlkit.embed import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EmbedResult", "embed"]
