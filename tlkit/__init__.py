"""tlkit: two-stage transfer learning for image classification.

Stage one (``tlkit.embed``) pushes every image once through a frozen ResNet-18
and stores the 512-d features in an HDF5 cache (``tlkit.cache``); stage two
(``tlkit.heads``) trains cheap classical or quantum heads on that cache.
"""

__version__ = "0.1.0"
