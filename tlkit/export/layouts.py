"""The three export layouts, written from one cache read with :func:`tlkit.cache.load_cache`.

Rows keep the cache's order: splits in the cache's split order, paths sorted within each.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlkit.atomic import atomic_bytes, atomic_json, remove_stale_tmp, replace_dir, storage_errors, tmp_name
from tlkit.errors import TlkitError
from tlkit.extras import require

MANIFEST = "export.json"
DTYPES = ("float32", "float16")


@dataclass
class ExportResult:
    out: Path
    format: str
    dtype: str
    rows: int
    files: list[str] = field(default_factory=list)


def _manifest(cache, fmt: str, dtype: str, files: dict[str, str]) -> dict:
    return {
        "format": f"tlkit-export/{fmt}",
        "dtype": dtype,  # float16: rounded from the cache's float32 features
        "cache": str(cache.path),
        "cache_content_sha256": cache.attrs.get("content_sha256"),
        "class_names": cache.class_names,
        "splits": {s: len(cache[s]) for s in cache.splits},
        "provenance": cache.provenance.as_dict(),
        "files": files,
    }


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _parquet_bytes(table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _rows(cache, dtype: str):
    """(split, features as dtype, labels, paths) per split, in the cache's order."""
    for split, arrays in cache.splits.items():
        yield split, arrays.features.astype(dtype, copy=False), arrays.labels, arrays.paths


def write_embedding_reader(cache, staging: Path, dtype: str) -> dict[str, str]:
    pa = require("pyarrow", "export", "--format embedding-reader")
    parts = list(_rows(cache, dtype))
    features = np.concatenate([f for _, f, _, _ in parts]) if parts else np.zeros((0, 0), dtype)
    labels = np.concatenate([y for _, _, y, _ in parts]).astype(np.int64)
    table = pa.table({
        "image_path": pa.array([p for _, _, _, paths in parts for p in paths.tolist()], pa.string()),
        "label": pa.array(labels, pa.int64()),
        "class_name": pa.array([cache.class_names[int(y)] for y in labels], pa.string()),
        "split": pa.array([s for s, f, _, _ in parts for _ in range(len(f))], pa.string()),
    })
    (staging / "img_emb").mkdir()
    (staging / "metadata").mkdir()
    atomic_bytes(staging / "img_emb" / "img_emb_0.npy", _npy_bytes(features))
    atomic_bytes(staging / "metadata" / "metadata_0.parquet", _parquet_bytes(table))
    return {"img_emb/img_emb_0.npy": f"features ({dtype}), every split, one row per image",
            "metadata/metadata_0.parquet": "image_path, label, class_name, split of each row, same order"}


def write_parquet(cache, staging: Path, dtype: str) -> dict[str, str]:
    pa = require("pyarrow", "export", "--format parquet")
    files = {}
    for split, features, labels, paths in _rows(cache, dtype):
        dim = features.shape[1]
        flat = pa.array(features.reshape(-1), pa.float16() if dtype == "float16" else pa.float32())
        embedding = pa.FixedSizeListArray.from_arrays(flat, dim)
        table = pa.table({
            "path": pa.array(paths.tolist(), pa.string()),
            "label": pa.array(labels, pa.int64()),
            "class_name": pa.array([cache.class_names[int(y)] for y in labels], pa.string()),
            "embedding": embedding,
        })
        meta = _manifest(cache, "parquet", dtype, {}) | {"split": split}
        meta.pop("files")
        table = table.replace_schema_metadata({b"tlkit": json.dumps(meta).encode()})
        atomic_bytes(staging / f"{split}.parquet", _parquet_bytes(table))
        files[f"{split}.parquet"] = f"split {split}: path, label, class_name, embedding ({dtype}[{dim}])"
    return files


def write_npy(cache, staging: Path, dtype: str) -> dict[str, str]:
    files, splits = {}, {}
    for split, features, labels, paths in _rows(cache, dtype):
        atomic_bytes(staging / f"{split}.npy", _npy_bytes(features))
        files[f"{split}.npy"] = f"split {split}: features ({dtype}), rows as in metadata.json"
        splits[split] = {"labels": labels.tolist(), "paths": paths.tolist()}
    atomic_json(staging / "metadata.json", {"class_names": cache.class_names, "splits": splits})
    files["metadata.json"] = "class_names, and per split the labels and paths of the rows"
    return files


FORMATS = {"embedding-reader": write_embedding_reader, "parquet": write_parquet, "npy": write_npy}


def export(cache_path, out, fmt: str, dtype: str = "float32") -> ExportResult:
    """Write cache ``cache_path`` to the new folder ``out`` in layout ``fmt`` (a name in :data:`FORMATS`)."""
    from tlkit.cache import load_cache

    if fmt not in FORMATS:
        raise TlkitError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise TlkitError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    out = Path(out)
    if out.exists():
        raise TlkitError(f"{out} already exists; exports never overwrite: choose a new folder or remove it")
    cache = load_cache(cache_path)  # refuses a missing, unfinished, foreign or damaged cache
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out)  # what a killed export left
    staging = tmp_name(out)
    staging.mkdir()
    try:
        with storage_errors(out, f"export {cache_path} to {out}"):
            files = FORMATS[fmt](cache, staging, dtype)
            atomic_json(staging / MANIFEST, _manifest(cache, fmt, dtype, files))
            replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    rows = sum(len(cache[s]) for s in cache.splits)
    return ExportResult(out=out, format=fmt, dtype=dtype, rows=rows, files=[MANIFEST, *files])
