"""``tlkit export``: a finished cache in the layouts other tools read.

* ``embedding-reader``: clip-retrieval's layout, ``img_emb/img_emb_0.npy`` and
  ``metadata/metadata_0.parquet`` (image_path, label, class_name, split), rows in the
  same order in both (:mod:`tlkit.export.layouts`);
* ``parquet``: one ``<split>.parquet`` per split, the features as a fixed-size list
  column and the provenance in the schema metadata;
* ``npy``: one ``<split>.npy`` per split and ``metadata.json`` (labels, paths).

Every layout also holds ``export.json``: the format, the dtype, the cache's path and
``content_sha256`` (the digest ``tlkit verify`` checks), its provenance and what each
file holds. float16 (``--dtype float16``) halves the size, is opt-in and is stated there.

The folder is written under a temporary name and renamed into place when complete,
so OUT either holds a whole export or does not exist.
"""

from __future__ import annotations

from tlkit.export.layouts import DTYPES, FORMATS, ExportResult, export

__all__ = ["DTYPES", "FORMATS", "ExportResult", "export"]
