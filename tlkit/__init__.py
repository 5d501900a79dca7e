"""tlkit: two-stage transfer learning for image classification.

Stage one (``tlkit.embed``) pushes every image once through a frozen ResNet-18
and stores the 512-d features in an HDF5 cache (``tlkit.cache``); stage two
(``tlkit.heads``) trains cheap classical or quantum heads on that cache.
"""

import os

# libgomp (torch's OpenMP on Linux) lets idle threads spin between parallel regions by
# default; on a small machine they then steal the cores that decode images, and embedding
# ran 2.2x slower (2 cores, bench/bench_embed.py). It is read once, when torch loads, so it
# only takes effect if tlkit is imported first (always so for the `tlkit` command); an
# explicit setting of the user's wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
