"""Precision through the command line: caches at bf16 / int8 stored, reused, refused, verified, predicted.

Each precision's cache of the small real subset (26 photos) is embedded once per module by `tlkit embed`
(``caches``); resumed, incremental, sharded and re-embedded runs must equal it bit for bit. The
numerics of each precision against fp32, and the int8 calibration, are in test_precision.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_helpers import assert_invoke_error, invoke
from conftest import without_every_second_val_image
from tlkit.cache import load_cache
from tlkit.data.discovery import discover
from tlkit.embed import embed
from tlkit.embed.job import RayOptions
from tlkit.embed.precision import Int8Calibration, Precision, calibration_sample, compare_features

QUIET = {"progress": False, "echo": lambda *_: None}

# -- end to end through the command line ---------------------------------------------------------------------


@pytest.mark.slow
def test_embed_at_each_precision_stores_float32_features_near_fp32(caches):
    """``caches`` ran `tlkit embed --precision P` through the command line (exit 0 asserted there)."""
    for split in ("train", "val"):
        fp32 = load_cache(caches["fp32"])[split]
        row = {p: i for i, p in enumerate(fp32.paths.tolist())}
        for precision in ("bf16", "int8"):
            other = load_cache(caches[precision])[split]
            assert other.features.dtype == np.float32
            paths = other.paths.tolist()
            assert paths == fp32.paths.tolist() if precision == "int8" else set(paths) < set(row)  # bf16: tiny
            agreement = compare_features(fp32.features[[row[p] for p in paths]], other.features)
            key, target = ("min_cosine", 0.999) if precision == "bf16" else ("mean_cosine", 0.99)
            assert agreement[key] >= target, (precision, agreement)
            assert agreement["max_abs_diff"] > 0


@pytest.mark.slow
@pytest.mark.ray
def test_ray_shards_embed_with_the_drivers_precision_and_calibration(ray_cluster, photos, caches, tmp_path):
    """Every Ray actor builds the network the local run builds: the precision and the driver's
    int8 calibration travel in the job, so sharded features equal local ones within verify's tolerance.

    The local runs are ``caches`` (the same photos, weights and batch size): bf16 on ``hymenoptera_tiny``
    (see ``photos``), int8 on the whole subset, so that the driver's calibration sample is the local one's."""
    options = {"weights": "random", "batch_size": 8, "workers": 0, "allow_slow": True, **QUIET}  # bf16 on AVX2: confirmed
    for precision in ("bf16", "int8"):
        local = load_cache(caches[precision])
        sharded = load_cache(embed(photos[precision], tmp_path / f"ray-{precision}.h5", precision=precision,
                                   backend="ray", ray=RayOptions(shards=3), **options).out)
        assert sharded.provenance.int8_calibration_sha256 == local.provenance.int8_calibration_sha256
        for split in ("train", "val"):
            assert sharded[split].paths.tolist() == local[split].paths.tolist()
            assert len(sharded[split]) == sum(p.is_file() for p in (photos[precision] / split).rglob("*"))
            # same machine, same network: exactly equal (the tightest bound that holds)
            np.testing.assert_array_equal(sharded[split].features, local[split].features,
                                          err_msg=f"{precision} {split}")


# -- precision is part of the feature space: stored, reused, refused, verified, predicted ---------------------


def _embed(data, out, precision, **kw):
    # allow_slow: bf16 is refused on a CPU without bf16 instructions (this one, AVX2-only) unless confirmed
    return embed(data, out, weights="random", precision=precision, batch_size=8, workers=0, allow_slow=True, **QUIET, **kw)


@pytest.fixture(scope="module")
def photos(hymenoptera_small, hymenoptera_tiny):
    """precision -> the photos its runs embed. bf16 takes ``hymenoptera_tiny`` (12 images, the first of each
    class of ``hymenoptera_small``): on a CPU without bf16 instructions it is emulated, 12x fp32's time on the
    AVX2 CI machine, and resume, increments, verify and predict work alike on fewer images. fp32 and int8 take
    the whole subset: int8's calibration sample is its training images (fewer than 32, so all of them)."""
    return {"fp32": hymenoptera_small, "bf16": hymenoptera_tiny, "int8": hymenoptera_small}


@pytest.fixture(scope="module")
def caches(photos, tmp_path_factory):
    """precision -> a cache of ``photos[precision]`` embedded in one uninterrupted run of `tlkit embed` (the
    command line, at _embed's settings: the runs below must equal these bit for bit)."""
    root = tmp_path_factory.mktemp("precision-caches")
    out = {}
    for precision in ("fp32", "bf16", "int8"):
        out[precision] = root / f"{precision}.h5"
        slow = ["--allow-slow"] if precision == "bf16" else []  # bf16 on a CPU without bf16 instructions: confirmed
        result = invoke("embed", photos[precision], out[precision], "--weights", "random", "--precision", precision,
                        *slow, "--batch-size", 8, "--workers", 0, "--no-progress")
        assert result.exit_code == 0, result.output
    return out


def _assert_same_cache(got, expected, precision):
    a, b = load_cache(got), load_cache(expected)
    assert a.provenance.precision == b.provenance.precision == precision
    assert a.provenance.int8_calibration_sha256 == b.provenance.int8_calibration_sha256
    for split in ("train", "val"):
        assert a[split].paths.tolist() == b[split].paths.tolist()
        # Same machine, same network (int8: from the same stored calibration): the kernels are
        # deterministic whatever the batch, so the tightest bound that holds is exact equality.
        np.testing.assert_array_equal(a[split].features, b[split].features)


def test_the_cache_records_its_precision_and_int8_calibration(caches, hymenoptera_small):
    fp32, bf16, int8 = (load_cache(caches[p]).provenance for p in ("fp32", "bf16", "int8"))
    assert (fp32.precision, bf16.precision, int8.precision) == ("fp32", "bf16", "int8")
    assert fp32.int8_calibration == bf16.int8_calibration == ""
    calibration = Int8Calibration.from_json(int8.int8_calibration)
    assert calibration.sha256 == int8.int8_calibration_sha256
    used = json.loads(calibration.sample.split(": ", 1)[1])
    items = discover(hymenoptera_small).items
    assert used == calibration_sample({"train": [it.path for it in items if it.split == "train"]})
    info = invoke("info", caches["int8"])
    assert info.exit_code == 0 and "precision" in info.output and "int8" in info.output
    assert "activation scales" in info.output  # the scales themselves only in --json


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_resumed_run_equals_an_uninterrupted_one(photos, caches, tmp_path, monkeypatch, precision):
    """Interrupted after half the images (between part files), then rerun: the same cache, bit for bit."""
    import tlkit.embed.pipeline as pipeline
    from tlkit.cache.parts import parts_dir_of, read_manifest

    real = pipeline.get_distributor("local")

    def half_then_killed(job, items, on_progress):
        real(job, items[: len(items) // 2], on_progress)
        raise KeyboardInterrupt

    out = tmp_path / "resumed.h5"
    monkeypatch.setattr(pipeline, "get_distributor", lambda backend: half_then_killed)
    with pytest.raises(KeyboardInterrupt):
        _embed(photos[precision], out, precision, rows_per_part=4)
    manifest = read_manifest(parts_dir_of(out))
    recorded = manifest["provenance"]
    assert recorded["precision"] == precision and not out.exists()
    if precision == "int8":  # the calibration is in the manifest, so the rerun does not measure another
        assert recorded["int8_calibration_sha256"] == load_cache(caches["int8"]).provenance.int8_calibration_sha256
    monkeypatch.setattr(pipeline, "get_distributor", lambda backend: real)
    result = _embed(photos[precision], out, precision, rows_per_part=4)
    assert 0 < result.embedded < result.embedded + result.already_cached
    _assert_same_cache(out, caches[precision], precision)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_incremental_run_equals_an_uninterrupted_one(photos, caches, tmp_path, precision):
    """A cache of part of the images, then the rest added: the same cache as one run over all.

    The first part holds every training image, which is the whole int8 calibration sample of
    this subset (fewer than 32), so the one-run cache and the first part calibrate alike; the
    second run must then reuse the stored calibration, not measure a new one.
    """
    first = tmp_path / "data"
    later = without_every_second_val_image(photos[precision], first)
    out = tmp_path / "incremental.h5"
    _embed(first, out, precision)
    stored = load_cache(out).provenance.int8_calibration_sha256
    result = _embed(photos[precision], out, precision)
    assert result.embedded == len(later)
    assert load_cache(out).provenance.int8_calibration_sha256 == stored
    _assert_same_cache(out, caches[precision], precision)


def test_another_precision_is_refused_by_embed_and_merge(hymenoptera_small, caches, tmp_path):
    import shutil

    out = tmp_path / "fp32.h5"
    shutil.copy(caches["fp32"], out)
    result = invoke("embed", hymenoptera_small, out, "--weights", "random", "--precision", "bf16", "--allow-slow",
                    "--workers", "0", "--no-progress")
    assert_invoke_error(result, "another feature space (precision: ", ignore=("note: ",))  # --allow-slow's note
    np.testing.assert_array_equal(load_cache(out)["train"].features, load_cache(caches["fp32"])["train"].features)
    result = invoke("merge", tmp_path / "merged.h5", caches["bf16"], caches["int8"])
    assert_invoke_error(result, "not in the feature space", "precision: bf16 vs int8")
    assert not (tmp_path / "merged.h5").exists()


def test_an_int8_calibration_of_another_run_is_refused(hymenoptera_small, caches, tmp_path):
    """Two int8 caches from different calibrations are two feature spaces: merge says which field."""
    import h5py

    from tlkit.cache.reader import CONTENT_DIGEST_ATTR, content_digest

    other = tmp_path / "other.h5"
    import shutil

    shutil.copy(caches["int8"], other)
    calibration = Int8Calibration.from_json(load_cache(other).provenance.int8_calibration)
    moved = Int8Calibration(calibration.sample, calibration.observers, tuple(s * 2 for s in calibration.scales),
                            calibration.zero_points, calibration.quant_min, calibration.quant_max)
    with h5py.File(other, "r+") as f:
        f.attrs.update(Precision("int8").provenance_attrs(moved))
        f.attrs[CONTENT_DIGEST_ATTR] = content_digest(f)
    result = invoke("merge", tmp_path / "merged.h5", caches["int8"], other)
    assert_invoke_error(result, "not in the feature space", "int8_calibration_sha256")


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_verify_data_rebuilds_the_recorded_precision(photos, caches, tmp_path, precision):
    import shutil

    import h5py

    good = invoke("verify", caches[precision], "--data", photos[precision], "--sample", "6")
    assert good.exit_code == 0, good.output
    assert f"at {precision}" in good.output and f"tolerance {Precision(precision).verify_tolerance:g}" in good.output
    tampered = tmp_path / "tampered.h5"
    shutil.copy(caches[precision], tampered)
    with h5py.File(tampered, "r+") as f:
        for split in ("train", "val"):  # every row: any sample finds it (a bf16 re-embedding is slow here)
            f[f"{split}/features"][:, :] = f[f"{split}/features"][...] * 1.05  # an edit every tolerance catches
    bad = invoke("verify", tampered, "--data", photos[precision], "--sample", "6")
    assert bad.exit_code == 1 and "differ from a fresh embedding" in bad.output


def test_a_cache_from_before_precisions_reads_as_fp32_and_verifies(hymenoptera_small, caches, tmp_path):
    import shutil

    import h5py

    from tlkit.cache.reader import CONTENT_DIGEST_ATTR, content_digest

    old = tmp_path / "old.h5"
    shutil.copy(caches["fp32"], old)
    with h5py.File(old, "r+") as f:  # what the tlkit before this change wrote
        for name in ("precision", "int8_calibration", "int8_calibration_sha256"):
            del f.attrs[name]
        f.attrs[CONTENT_DIGEST_ATTR] = content_digest(f)
    assert load_cache(old).provenance.precision == "fp32"
    result = invoke("verify", old, "--data", hymenoptera_small, "--sample", "4")
    assert result.exit_code == 0, result.output
    up_to_date = _embed(hymenoptera_small, old, "fp32")  # the same feature space: nothing to do
    assert up_to_date.up_to_date


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_predict_rebuilds_the_backbone_of_the_cache(photos, caches, tmp_path, precision):
    """A head run on a bf16/int8 cache: predict reproduces the run's own evaluation probabilities."""
    from tlkit.runs import load_run

    run_dir = tmp_path / "run"
    fit = invoke("fit-head", "--head", "logreg", "--cache", caches[precision], "--out", run_dir, "--no-progress")
    assert fit.exit_code == 0, fit.output
    result = invoke("predict", run_dir, photos[precision] / "val", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    got = {p["path"].removeprefix(str(photos[precision]) + "/"): [p["probabilities"][c] for c in doc["class_names"]]
           for p in doc["predictions"]}
    run = load_run(run_dir)
    expected = dict(zip(run.predictions["paths"], run.predictions["proba_final"]))
    assert sorted(got) == sorted(expected)
    for path, proba in expected.items():
        np.testing.assert_allclose(got[path], proba, atol=1e-6, err_msg=path)


def test_report_refuses_head_runs_of_different_precisions(photos, caches, tmp_path):
    same_images = {"fp32": _embed(photos["bf16"], tmp_path / "fp32.h5", "fp32").out, "bf16": caches["bf16"]}
    runs = {}
    for precision in ("fp32", "bf16"):
        runs[precision] = tmp_path / f"run-{precision}"
        fit = invoke("fit-head", "--head", "logreg", "--cache", same_images[precision], "--out", runs[precision],
                     "--no-progress")
        assert fit.exit_code == 0, fit.output
    result = invoke("report", runs["fp32"], runs["bf16"], "--out", tmp_path / "report")
    assert_invoke_error(result, "different precisions", "at fp32", "at bf16")
    same = invoke("report", runs["bf16"], runs["bf16"], "--out", tmp_path / "report-bf16")
    assert same.exit_code == 0, same.output
    assert "at bf16" in (tmp_path / "report-bf16" / "report.json").read_text()
