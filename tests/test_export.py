"""tlkit export: embedding-reader, parquet and npy layouts read back by those tools equal the cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_invoke_error, invoke
from tlkit.cache import load_cache

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def small_cache(hymenoptera_small_cache) -> Path:
    """hymenoptera_small embedded once per session (conftest.py; read only)."""
    return hymenoptera_small_cache


@pytest.fixture
def embedding_reader(monkeypatch):
    """embedding_reader, with its file listing fixed for the fsspec installed here.

    embedding-reader 1.1.x (1.1.7 is the newest that installs beside pandas 3) globs ``FOLDER**/*.npy``,
    which fsspec 2024.12+ refuses ("'**' can only be an entire path component"; 1.6.0 fixed the
    listing); the readers themselves (header parsing, batching, dtype handling) are unchanged and
    are what is tested.
    """
    er = pytest.importorskip("embedding_reader")
    from embedding_reader import get_file_list as listing

    original = listing._get_file_list

    def fixed(path, file_format, sort_result=True):
        try:
            return original(path, file_format, sort_result)
        except ValueError as exc:
            if "'**'" not in str(exc):
                raise
            path = listing.make_path_absolute(path)
            fs, inside = listing.fsspec.core.url_to_fs(path)
            files = sorted(fs.glob(path.rstrip("/") + f"/**/*.{file_format}"))
            return fs, [path[: path.index(inside)] + f for f in files]

    monkeypatch.setattr(listing, "_get_file_list", fixed)
    return er


def _cache_rows(cache):
    """Every split's rows in the cache's order: features, labels, paths, splits."""
    splits = list(cache.splits)
    return (np.concatenate([cache[s].features for s in splits]), np.concatenate([cache[s].labels for s in splits]),
            [p for s in splits for p in cache[s].paths.tolist()], [s for s in splits for _ in range(len(cache[s]))])


def _check_manifest(out: Path, cache, fmt: str, dtype: str) -> dict:
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["format"] == f"tlkit-export/{fmt}" and manifest["dtype"] == dtype
    assert manifest["cache_content_sha256"] == cache.attrs["content_sha256"] and len(manifest["cache_content_sha256"]) == 64
    assert manifest["provenance"]["weights_id"] == cache.provenance.weights_id
    assert manifest["splits"] == {s: len(cache[s]) for s in cache.splits}
    return manifest


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_embedding_reader_layout_reads_back_equal(small_cache, tmp_path, dtype, embedding_reader):
    out = tmp_path / "emb"
    result = invoke("export", small_cache, out, "--format", "embedding-reader", "--dtype", dtype)
    assert result.exit_code == 0, result.output
    cache = load_cache(small_cache)
    X, y, paths, splits = _cache_rows(cache)
    _check_manifest(out, cache, "embedding-reader", dtype)

    # embedding-reader 1.1.x has no file_format="parquet_npy" (clip-retrieval's pairing arrived later);
    # its "npy" reader reads img_emb/ and pyarrow the metadata beside it, row for row.
    reader = embedding_reader.EmbeddingReader(str(out / "img_emb"), file_format="npy")
    assert reader.count == len(y) and reader.dimension == X.shape[1]
    got = np.concatenate([batch for batch, _ in reader(batch_size=10, show_progress=False)])
    stored = np.load(out / "img_emb" / "img_emb_0.npy")
    assert stored.dtype == np.dtype(dtype)
    if dtype == "float32":
        assert np.array_equal(got, X)
    else:
        assert np.array_equal(got, X.astype(np.float16).astype(np.float32))  # exactly float16 rounding
        assert np.allclose(got, X, rtol=2 ** -10, atol=6e-8)
    meta = pq.read_table(out / "metadata" / "metadata_0.parquet").to_pydict()
    assert meta["image_path"] == paths and meta["label"] == y.tolist() and meta["split"] == splits
    assert meta["class_name"] == [cache.class_names[i] for i in y]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_embedding_reader_parquet_npy_reads_export_with_its_metadata(small_cache, tmp_path, dtype, embedding_reader):
    """The issue's reader call, ``EmbeddingReader(..., file_format="parquet_npy")``: embeddings and metadata
    together, row for row. embedding-reader has it from 1.3.0; every release that has it requires pandas<3."""
    import importlib.util

    from importlib.metadata import version

    if importlib.util.find_spec("embedding_reader.parquet_numpy_reader") is None:
        pytest.skip(f"embedding-reader {version('embedding-reader')} has no parquet_npy reader (1.3.0 and later; "
                    "all of them require pandas<3)")
    out = tmp_path / "emb"
    assert invoke("export", small_cache, out, "--format", "embedding-reader", "--dtype", dtype).exit_code == 0
    cache = load_cache(small_cache)
    X, y, paths, splits = _cache_rows(cache)
    columns = ["image_path", "label", "class_name", "split"]
    reader = embedding_reader.EmbeddingReader(str(out / "img_emb"), file_format="parquet_npy",
                                              metadata_folder=str(out / "metadata"), meta_columns=columns)
    assert reader.count == len(y) and reader.dimension == X.shape[1]
    batches = list(reader(batch_size=10, show_progress=False))
    got = np.concatenate([batch for batch, _ in batches]).astype(np.float32)
    assert np.array_equal(got, X if dtype == "float32" else X.astype(np.float16).astype(np.float32))
    meta = {c: [v for _, m in batches for v in m[c].tolist()] for c in columns}
    assert meta["image_path"] == paths and meta["label"] == y.tolist() and meta["split"] == splits
    assert meta["class_name"] == [cache.class_names[i] for i in y]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_parquet_layout_one_file_per_split_with_provenance(small_cache, tmp_path, dtype, embedding_reader):
    out = tmp_path / "pq"
    assert invoke("export", small_cache, out, "--format", "parquet", "--dtype", dtype).exit_code == 0
    cache = load_cache(small_cache)
    _check_manifest(out, cache, "parquet", dtype)
    assert sorted(p.name for p in out.glob("*.parquet")) == sorted(f"{s}.parquet" for s in cache.splits)
    for split in cache.splits:
        table = pq.read_table(out / f"{split}.parquet")
        column = table.schema.field("embedding").type
        assert pa.types.is_fixed_size_list(column) and column.list_size == 512
        assert column.value_type == (pa.float16() if dtype == "float16" else pa.float32())
        meta = json.loads(table.schema.metadata[b"tlkit"])
        assert meta["split"] == split and meta["dtype"] == dtype
        assert meta["cache_content_sha256"] == cache.attrs["content_sha256"]
        assert meta["provenance"]["transform"] == json.loads(cache.provenance.transform)
        X = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
        assert np.array_equal(X, cache[split].features.astype(dtype).astype(np.float32))
        assert table.column("path").to_pylist() == cache[split].paths.tolist()
        assert table.column("label").to_pylist() == cache[split].labels.tolist()
    if dtype == "float32":  # embedding-reader's parquet reader takes the same folder
        reader = embedding_reader.EmbeddingReader(str(out), file_format="parquet", embedding_column="embedding")
        got = np.concatenate([b for b, _ in reader(batch_size=8, show_progress=False)])
        assert np.array_equal(np.sort(got, axis=0), np.sort(_cache_rows(cache)[0], axis=0))


def test_npy_layout_and_metadata_json(small_cache, tmp_path):
    out = tmp_path / "np"
    assert invoke("export", small_cache, out, "--format", "npy").exit_code == 0
    cache = load_cache(small_cache)
    _check_manifest(out, cache, "npy", "float32")
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["class_names"] == cache.class_names
    for split in cache.splits:
        assert np.array_equal(np.load(out / f"{split}.npy"), cache[split].features)
        assert meta["splits"][split] == {"labels": cache[split].labels.tolist(), "paths": cache[split].paths.tolist()}


def test_bad_input_is_one_line_and_leaves_nothing(small_cache, tmp_path):
    assert_invoke_error(invoke("export", small_cache, tmp_path / "x", "--format", "arrow"), "unknown export format", "npy")
    assert_invoke_error(invoke("export", small_cache, tmp_path / "y", "--format", "npy", "--dtype", "int8"), "dtype")
    assert_invoke_error(invoke("export", tmp_path / "none.h5", tmp_path / "z", "--format", "npy"), "does not exist")
    (tmp_path / "taken").mkdir()
    assert_invoke_error(invoke("export", small_cache, tmp_path / "taken", "--format", "npy"), "already exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no partial or temporary folder left


def test_missing_pyarrow_names_the_extra(small_cache, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    line = assert_invoke_error(invoke("export", small_cache, tmp_path / "o", "--format", "parquet"))
    assert "pip install 'tlkit[export]'" in line
    assert not (tmp_path / "o").exists()
