"""Stage one: push every image once through the frozen backbone into the cache.

The pipeline has the roles of clip-retrieval's inference: a **reader**
(decoding in worker processes), a **mapper** (the frozen ResNet-18), a
**writer** (atomic part files), composed by a **runner** per shard and
driven by a **distributor** (local, or Ray). :func:`embed` plans the work
and publishes the finished cache.
"""

from tlkit.embed.pipeline import EmbedResult, embed

__all__ = ["EmbedResult", "embed"]
