"""`tlkit info`, `verify`, `merge`: what they report, what they refuse, and damaged files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import launcher
from synthetic import make_class_folder, save_not_an_image
from cli_helpers import assert_one_line_error, tlkit_cli
from tlkit.cache import load_cache
from tlkit.cache.assemble import assemble
from tlkit.cache.info import cache_info, format_info
from tlkit.cache.lock import CacheLock, lock_holder
from tlkit.cache.merge import merge
from tlkit.cache.schema import FORMAT, PART_FORMAT, SCHEMA_VERSION, Provenance
from tlkit.cache.verify import verify_cache
from tlkit.cache.writer import atomic_h5, write_root_attrs, write_skipped, write_split
from tlkit.data import TransformSpec
from tlkit.embed import embed
from tlkit.embed.check import verify_with_data
from tlkit.errors import CacheBusy, CacheError
from tlkit.weights import Weights

QUIET = {"progress": False, "echo": lambda *_: None}


# ---------------------------------------------------------------------------------------------
# fixtures: a real small cache, and synthetic caches built through the real writer (assemble)

@pytest.fixture(scope="module")
def small_cache(hymenoptera_small_cache) -> Path:
    """hymenoptera_small embedded without interruption (once per session, shared with the other fault and
    cache-tool tests: conftest.py)."""
    return hymenoptera_small_cache


def provenance(**changes) -> Provenance:
    base = dict(backbone="resnet18", layer="avgpool", weights_id="random:seed=0", weights_sha256="ab" * 32,
                transform=TransformSpec().to_json(), feature_dim=512, tlkit_version="0.1.0", torch_version="2.0",
                torchvision_version="0.15", created="2026-01-01T00:00:00+00:00", data_root="/data")
    return Provenance(**{**base, **changes})


def write_source(path: Path, splits: dict, class_names: list[str], fmt=PART_FORMAT, skipped=()) -> Path:
    """A cache-shaped file written with the low-level writer: ``splits`` maps split -> (paths, labels, features)."""
    with atomic_h5(path) as f:
        write_root_attrs(f, format=fmt, schema_version=SCHEMA_VERSION, complete=True, splits=list(splits),
                         class_names=class_names, **(provenance().to_attrs() if fmt == FORMAT else {}))
        for split, (paths, labels, feats) in splits.items():
            write_split(f, split, feats, labels, paths)
        write_skipped(f, list(skipped))
    return path


def synthetic_cache(path: Path, splits: dict, class_names: list[str], prov: Provenance | None = None, skipped=()) -> Path:
    """A finished cache (digests and all) made by the same code that publishes embeds."""
    src = write_source(path.with_name(path.name + ".src"), splits, class_names, skipped=skipped)
    assemble(path, [src], class_names, (prov or provenance()).to_attrs() | {"updated": "now"}, skipped=list(skipped))
    src.unlink()
    return path


def rows(n: int, prefix: str, n_classes: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    paths = [f"{prefix}/{i:05d}.jpg" for i in range(n)]
    return paths, rng.integers(0, n_classes, n), rng.standard_normal((n, 512)).astype(np.float32)


def flip_byte(path: Path, offset: int, new: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[offset] = data[offset] ^ 0x01 if new is None else new
    path.write_bytes(bytes(data))


def chunk_offset(path: Path, dataset: str) -> int:
    with h5py.File(path, "r") as f:
        return f[dataset].id.get_chunk_info(0).byte_offset


# ---------------------------------------------------------------------------------------------
# info

def test_info_reports_contents_and_json(small_cache):
    info = cache_info(small_cache)
    cache = load_cache(small_cache)
    assert info["state"] == "finished" and info["finished_cache"] and info["in_progress"] is None
    assert info["size_bytes"] == small_cache.stat().st_size
    assert info["class_names"] == ["ants", "bees"]
    for split in ("train", "val"):
        labels = cache[split].labels
        expected = {name: int((labels == i).sum()) for i, name in enumerate(cache.class_names)}
        assert info["splits"][split]["per_class"] == expected
        assert info["splits"][split]["features"]["shape"] == [len(labels), 512]
        assert info["splits"][split]["features"]["dtype"] == "float32"
        assert info["splits"][split]["features"]["fletcher32"] is True
    assert info["splits"]["train"]["per_class"] == {"ants": 8, "bees": 8}
    assert info["provenance"]["weights_sha256"] == cache.provenance.weights_sha256
    assert info["provenance"]["transform"] == json.loads(TransformSpec().to_json())

    proc = tlkit_cli("info", small_cache, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(json.dumps(info))
    text = tlkit_cli("info", small_cache).stdout
    for fragment in ("state       finished", "ants", "bees", "random:seed=0", cache.provenance.weights_sha256,
                     "float32 (rows, 512)", "fletcher32", "skipped     0 file(s)"):
        assert fragment in text, fragment
    assert [line.split() for line in text.splitlines() if line.startswith(("ants", "bees"))] == [
        ["ants", "8", "5"], ["bees", "8", "5"]]


def test_info_lists_skipped_files_with_reasons(tmp_path):
    data = tmp_path / "data"
    make_class_folder(data / "train" / "a", 2, seed=1)
    make_class_folder(data / "train" / "b", 2, seed=2)
    save_not_an_image(data / "train" / "b" / "text.jpg")
    out = tmp_path / "feats.h5"
    embed(data, out, weights="random", workers=0, **QUIET)
    info = cache_info(out)
    assert info["skipped"] == [{"path": "train/b/text.jpg", "split": "train", "reason": "not an image PIL can read"}]
    assert "train/b/text.jpg: not an image PIL can read" in format_info(info)


def test_info_abbreviates_many_classes_unless_asked(tmp_path):
    names = [f"class{i:02d}" for i in range(40)]
    paths, labels, feats = rows(80, "train/x", n_classes=40)
    out = synthetic_cache(tmp_path / "c.h5", {"train": (paths, labels, feats)}, names)
    short, full = format_info(cache_info(out)), format_info(cache_info(out), all_classes=True)
    assert "10 more classes" in short and "class39" not in short.split("class     ")[-1]
    assert all(name in full for name in names)


def test_info_shows_progress_of_an_interrupted_and_a_running_embed(hymenoptera_small, small_cache, tmp_path):
    out = tmp_path / "feats.h5"
    parts = tmp_path / "feats.h5.parts"
    # a real interruption: kill -9 once some part files exist
    proc = launcher.popen([sys.executable, "-m", "tlkit.cli", "embed", str(hymenoptera_small), str(out),
                           "--weights", "random", "--workers", "0", "--batch-size", "2", "--checkpoint-every", "2"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(parts.glob("part-*.h5"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    assert not out.exists(), "the kill should land before publication"
    info = cache_info(out)
    done = info["in_progress"]["rows"]
    assert info["state"].startswith("unfinished: embed interrupted") and info["writer_pid"] is None
    assert info["in_progress"]["to_embed"] == 26 and 4 <= done < 26
    assert info["in_progress"]["parts"] == len(list(parts.glob("*.h5")))
    assert f"{done} of 26 images" in format_info(info)
    cli = tlkit_cli("info", out)
    assert cli.returncode == 0 and "embed interrupted" in cli.stdout

    with CacheLock(out):  # a live writer: info names it, without taking the lock itself
        assert lock_holder(out) == os.getpid()
        assert cache_info(out)["state"] == f"unfinished: embed running (pid {os.getpid()})"
    assert lock_holder(out) is None

    embed(hymenoptera_small, out, weights="random", workers=0, **QUIET)  # finish it
    info = cache_info(out)
    assert info["state"] == "finished" and info["in_progress"] is None and not parts.exists()


def test_info_during_an_incremental_embed_shows_the_old_cache_and_the_progress(small_cache, tmp_path):
    out = tmp_path / "feats.h5"
    shutil.copy2(small_cache, out)
    parts = tmp_path / "feats.h5.parts"
    parts.mkdir()
    (parts / "manifest.json").write_text(json.dumps({"provenance": {"weights_id": "random:seed=0"}, "to_embed": 10,
                                                     "started": "2026-01-01T00:00:00+00:00"}))
    write_source(parts / "part-000000.h5", {"val": rows(3, "val/ants")}, ["ants", "bees"])
    info = cache_info(out)
    assert info["finished_cache"] and info["state"].startswith("finished, with new images in progress")
    assert info["in_progress"]["rows"] == 3 and info["in_progress"]["rows_per_split"] == {"val": 3}
    assert "3 of 10 images (30%)" in format_info(info)
    assert len(load_cache(out)["train"]) == 16  # readers still get the previous complete cache


def test_info_on_missing_and_foreign_files_is_one_line(tmp_path):
    assert_one_line_error(tlkit_cli("info", tmp_path / "nope.h5"), "does not exist")
    (tmp_path / "x.h5").write_text("hello")
    assert_one_line_error(tlkit_cli("info", tmp_path / "x.h5"), "not an HDF5 file")
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f["a"] = [1]
    assert_one_line_error(tlkit_cli("info", tmp_path / "y.h5"), "not a tlkit feature cache")


# ---------------------------------------------------------------------------------------------
# layering: the cache package stands on its own

def test_the_cache_package_never_imports_the_embed_side():
    """Every module of tlkit.cache, imported in a fresh interpreter, pulls in no layer above it (nor torch)."""
    code = (
        "import importlib, json, pkgutil, sys, tlkit.cache\n"
        "names = [m.name for m in pkgutil.iter_modules(tlkit.cache.__path__, 'tlkit.cache.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "above = ('tlkit.embed', 'tlkit.data', 'tlkit.weights', 'tlkit.device', 'torch', 'torchvision')\n"
        "print(json.dumps([names, sorted(m for m in sys.modules if m.split('.')[0] in above or m.startswith(above))]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    names, imported = json.loads(proc.stdout)
    assert {"tlkit.cache.verify", "tlkit.cache.parts", "tlkit.cache.cli", "tlkit.cache.merge"} <= set(names)
    assert imported == []


# ---------------------------------------------------------------------------------------------
# verify: integrity

def test_verify_passes_a_good_cache_and_reembeds_a_sample(hymenoptera_small, small_cache):
    report = verify_with_data(small_cache, data_dir=hymenoptera_small, sample=6, progress=False)
    assert report.ok, report.problems
    assert any("re-embedded 6 sampled image(s)" in line for line in report.passed)
    proc = tlkit_cli("verify", small_cache, "--data", hymenoptera_small, "--sample", "4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verified: no problems" in proc.stdout and "PROBLEM" not in proc.stdout


@pytest.mark.parametrize("defect, expected", [
    ("nan", "feature row(s) hold NaN or inf: rows 3 (train/x/00003.jpg)"),
    ("label", "label(s) outside 0..1: rows 5 (train/x/00005.jpg)"),
    ("duplicate", "path(s) appear more than once: train/x/00001.jpg"),
    ("unsorted", "paths are not sorted"),
    ("counts", "row counts differ: features 10, labels 9, paths 10"),
    ("leak", "in both train and val (a leak between splits)"),
    ("no-checksum", "train/features carries no fletcher32 checksums"),
])
def test_verify_reports_each_defect_on_its_own_line(tmp_path, defect, expected):
    paths, labels, feats = rows(10, "train/x")
    out = tmp_path / "c.h5"
    if defect == "nan":
        feats[3, 7] = np.nan
        synthetic_cache(out, {"train": (paths, labels, feats)}, ["a", "b"])
    else:  # defects the writer cannot produce: made by hand with h5py
        splits = {"train": (paths, labels, feats)}
        if defect == "label":
            labels[5] = 2
        elif defect == "duplicate":
            paths[2] = paths[1]
        elif defect == "unsorted":
            paths[2], paths[3] = paths[3], paths[2]
        elif defect == "leak":
            splits["val"] = ([paths[4]], [0], feats[:1])
        write_source(out, splits, ["a", "b"], fmt=FORMAT)
        with h5py.File(out, "r+") as f:
            if defect == "counts":
                f["train/labels"].resize(9, axis=0)
            if defect == "no-checksum":
                del f["train/features"]
                f["train"].create_dataset("features", data=feats)
    report = verify_cache(out, progress=False)
    assert not report.ok
    assert any(expected in line for line in report.problems), report.problems
    proc = tlkit_cli("verify", out)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    problem_lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBLEM")]
    assert len(problem_lines) == len(report.problems) and any(expected in line for line in problem_lines)
    assert proc.stdout.splitlines()[-1].endswith(f"{len(report.problems)} problem(s) found in {out}")


def test_verify_reports_skipped_files_that_also_have_rows(tmp_path):
    paths, labels, feats = rows(4, "train/x")
    out = tmp_path / "c.h5"
    write_source(out, {"train": (paths, labels, feats)}, ["a", "b"], fmt=FORMAT, skipped=[(paths[0], "train", "bad")])
    report = verify_cache(out, progress=False)
    assert any("listed as skipped and also have features, e.g. train/x/00000.jpg" in p for p in report.problems)


# ---------------------------------------------------------------------------------------------
# verify: reproduction with the recorded weights

def test_verify_catches_changed_and_missing_images(hymenoptera_small, small_cache, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(hymenoptera_small, data)
    changed = sorted((data / "train" / "ants").iterdir())[0]
    ImageOps.mirror(Image.open(changed).convert("RGB")).save(changed, quality=95)
    missing = sorted((data / "val" / "bees").iterdir())[0]
    missing.unlink()
    report = verify_with_data(small_cache, data_dir=data, sample=26, progress=False)
    rel = lambda p: p.relative_to(data).as_posix()  # noqa: E731
    assert any(line.startswith(f"{rel(changed)}: stored features differ from a fresh embedding (max abs diff")
               for line in report.problems), report.problems
    assert f"{rel(missing)}: missing from {data} (cannot re-embed it)" in report.problems
    assert len(report.problems) == 2  # the 24 unchanged images reproduce within the tolerance


def test_verify_tolerance_separates_rounding_from_real_change(hymenoptera_small, small_cache, tmp_path):
    cache = load_cache(small_cache)
    prov = cache.provenance
    splits = {s: (cache[s].paths.tolist(), cache[s].labels, cache[s].features) for s in cache.splits}
    rounding = {s: (p, y, x + np.float32(2e-6)) for s, (p, y, x) in splits.items()}
    changed = {s: (p, y, x * np.float32(1.01) + np.float32(1e-3)) for s, (p, y, x) in splits.items()}
    near = synthetic_cache(tmp_path / "near.h5", rounding, cache.class_names, prov)
    far = synthetic_cache(tmp_path / "far.h5", changed, cache.class_names, prov)
    assert verify_with_data(near, data_dir=hymenoptera_small, sample=5, progress=False).ok
    report = verify_with_data(far, data_dir=hymenoptera_small, sample=5, progress=False)
    assert len(report.problems) == 5 and all("> tolerance 0.0001" in p for p in report.problems)


def test_verify_with_a_weights_file(hymenoptera_small, tmp_path):
    weights = tmp_path / "mine.pt"
    torch.save(Weights.random(3).load().state_dict, weights)
    out = tmp_path / "feats.h5"
    embed(hymenoptera_small, out, weights=str(weights), workers=0, **QUIET)
    report = verify_with_data(out, data_dir=hymenoptera_small, sample=2, progress=False)
    assert report.problems == ["the features were embedded with the weights file mine.pt: pass --weights PATH to that file"]
    assert verify_with_data(out, data_dir=hymenoptera_small, sample=2, weights=weights, progress=False).ok
    other = tmp_path / "other.pt"
    torch.save(Weights.random(4).load().state_dict, other)
    report = verify_with_data(out, data_dir=hymenoptera_small, sample=2, weights=other, progress=False)
    assert len(report.problems) == 1 and "not the weights the features were made with" in report.problems[0]


# ---------------------------------------------------------------------------------------------
# damaged files: one line from info / verify / load_cache (fit-head), never a traceback

def test_digests_are_utf8_text_and_caches_with_byte_string_digests_still_load(small_cache, tmp_path):
    with h5py.File(small_cache, "r") as f:
        for obj, key in ((f, "content_sha256"), (f["train/paths"], "sha256"), (f, "weights_id")):
            info = h5py.check_string_dtype(obj.attrs.get_id(key).dtype)
            assert info.encoding == "utf-8" and info.length is None, key
            assert isinstance(obj.attrs[key], str)
    old = tmp_path / "old.h5"  # as caches written before: fixed-length byte strings
    shutil.copy2(small_cache, old)
    with h5py.File(old, "r+") as f:
        for obj, key in [(f, "content_sha256")] + [(f[s]["paths"], "sha256") for s in f.attrs["splits"]]:
            obj.attrs[key] = np.bytes_(obj.attrs[key])
        assert h5py.check_string_dtype(f.attrs.get_id("content_sha256").dtype).length == 64
    assert verify_cache(old, progress=False).ok
    cache = load_cache(old)
    np.testing.assert_array_equal(cache["val"].features, load_cache(small_cache)["val"].features)
    with h5py.File(old, "r+") as f:  # and the digests are still checked
        f["val/paths"].attrs["sha256"] = np.bytes_("0" * 64)
    with pytest.raises(CacheError, match="do not match their sha256 digest"):
        load_cache(old)


def test_truncated_cache_is_one_line_everywhere(small_cache, tmp_path):
    bad = tmp_path / "trunc.h5"
    bad.write_bytes(small_cache.read_bytes()[: small_cache.stat().st_size // 2])
    assert_one_line_error(tlkit_cli("info", bad), "truncated or corrupt")
    with pytest.raises(CacheError, match="truncated or corrupt"):
        load_cache(bad)
    proc = tlkit_cli("verify", bad)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    problems = [line for line in proc.stdout.splitlines() if line.startswith("PROBLEM")]
    assert len(problems) == 1 and "truncated or corrupt" in problems[0]


def test_flipped_feature_chunk_is_caught_by_checksum(small_cache, tmp_path):
    bad = tmp_path / "flip.h5"
    shutil.copy2(small_cache, bad)
    flip_byte(bad, chunk_offset(bad, "val/features") + 100)
    with pytest.raises(CacheError, match="is damaged.*tlkit verify"):
        load_cache(bad)
    report = verify_cache(bad, progress=False)
    assert len(report.problems) == 1
    assert report.problems[0].startswith("val/features rows 0-9 fail their checksum or cannot be read"), report.problems


def test_flipped_label_chunk_stops_info_with_one_line(small_cache, tmp_path):
    bad = tmp_path / "flip.h5"
    shutil.copy2(small_cache, bad)
    flip_byte(bad, chunk_offset(bad, "train/labels") + 3)
    assert_one_line_error(tlkit_cli("info", bad), "is damaged")
    assert any(p.startswith("train/labels rows 0-15 fail their checksum") for p in verify_cache(bad, progress=False).problems)


def test_altered_text_is_caught_by_the_digests(small_cache, tmp_path):
    # Strings (provenance, class names, paths) are outside HDF5's checksums: a changed
    # character would read back as valid data without tlkit's own sha256 digests.
    data = small_cache.read_bytes()
    weights = tmp_path / "weights.h5"
    weights.write_bytes(data)
    at = data.index(b"random:seed=0")
    flip_byte(weights, at + len("random:seed="), ord("1"))
    assert_one_line_error(tlkit_cli("info", weights), "do not match their sha256 digest")
    with pytest.raises(CacheError, match="sha256 digest"):
        load_cache(weights)
    assert any("content digest" in p for p in verify_cache(weights, progress=False).problems)

    path = tmp_path / "path.h5"
    path.write_bytes(data)
    name = load_cache(small_cache)["val"].paths[0].encode()
    flip_byte(path, data.index(name) + len(name) - 5, ord("X"))
    with pytest.raises(CacheError, match="paths of split 'val' do not match their sha256 digest"):
        load_cache(path)
    assert "val/paths do not match their sha256 digest: some path was altered" in verify_cache(path, progress=False).problems


def test_seeded_byte_flips_never_pass_as_different_valid_data(small_cache, tmp_path):
    reference = load_cache(small_cache)
    data = small_cache.read_bytes()
    rng = np.random.default_rng(5)
    bad = tmp_path / "bad.h5"
    outcomes = {"rejected": 0, "unchanged": 0}
    for offset in rng.choice(len(data), size=150, replace=False):
        broken = bytearray(data)
        broken[offset] ^= 1 << int(rng.integers(0, 8))
        bad.write_bytes(bytes(broken))
        try:
            cache_info(bad)
        except CacheError:
            pass
        report = verify_cache(bad, progress=False)  # never raises: problems are lines
        try:
            cache = load_cache(bad)
        except CacheError:
            assert not report.ok, f"offset {offset}: load_cache rejects what verify passes"
            outcomes["rejected"] += 1
            continue
        # whatever still loads must be exactly the original content (a flip in unused bytes)
        assert report.ok, (offset, report.problems)
        assert cache.class_names == reference.class_names and cache.provenance == reference.provenance
        assert cache.skipped == reference.skipped
        for split in reference.splits:
            assert cache[split].paths.tolist() == reference[split].paths.tolist()
            np.testing.assert_array_equal(cache[split].labels, reference[split].labels)
            np.testing.assert_array_equal(cache[split].features, reference[split].features)
        outcomes["unchanged"] += 1
    assert outcomes["rejected"] > 100, outcomes  # most bytes of the file matter


# ---------------------------------------------------------------------------------------------
# merge

def test_merge_of_per_class_caches_equals_one_embed(hymenoptera_small, small_cache, tmp_path):
    caches = []
    for cls in ("bees", "ants"):  # classes in reverse order: the labels must be remapped
        data = tmp_path / cls
        for split in ("train", "val"):
            shutil.copytree(hymenoptera_small / split / cls, data / split / cls)
        caches.append(tmp_path / f"{cls}.h5")
        embed(data, caches[-1], weights="random", workers=0, **QUIET)
    assert load_cache(caches[0]).class_names == ["bees"]
    out = tmp_path / "merged.h5"
    proc = tlkit_cli("merge", out, *caches)
    assert proc.returncode == 0, proc.stderr
    assert "merged 26 rows" in proc.stdout and "labels remapped to the union of classes: ants, bees" in proc.stdout
    merged, whole = load_cache(out), load_cache(small_cache)
    assert merged.class_names == ["ants", "bees"]
    for split in whole.splits:
        assert merged[split].paths.tolist() == whole[split].paths.tolist()
        np.testing.assert_array_equal(merged[split].labels, whole[split].labels)
        np.testing.assert_allclose(merged[split].features, whole[split].features, atol=1e-5, rtol=0)
    record = cache_info(out)["merged_from"]
    assert [r["class_names"] for r in record] == [["bees"], ["ants"]]
    assert [r["label_map"] for r in record] == [[1], [0]]
    assert verify_with_data(out, data_dir=hymenoptera_small, sample=4, progress=False).ok


def test_merge_deduplicates_first_input_wins_and_keeps_skipped(tmp_path):
    a_paths, a_labels, a_feats = rows(6, "train/x", seed=1)
    b_paths, b_labels, b_feats = rows(6, "train/x", seed=2)
    b_paths = b_paths[3:] + ["train/x/new.jpg", "train/x/zzz.jpg", "train/x/00000a.jpg"]
    a = synthetic_cache(tmp_path / "a.h5", {"train": (a_paths, a_labels, a_feats)}, ["a", "b"],
                        skipped=[("train/x/bad.jpg", "train", "not an image"), ("train/x/new.jpg", "train", "truncated")])
    b = synthetic_cache(tmp_path / "b.h5", {"train": (b_paths, b_labels, b_feats), "val": rows(2, "val/x")},
                        ["a", "b"])
    result = merge(tmp_path / "ab.h5", [a, b])
    assert result.counts == {"train": 9, "val": 2} and result.duplicates == 3 and not result.remapped
    out = load_cache(tmp_path / "ab.h5")
    expected = {**{p: x for p, x in zip(b_paths, b_feats)}, **{p: x for p, x in zip(a_paths, a_feats)}}  # a wins
    assert out["train"].paths.tolist() == sorted(expected)
    for p, x in zip(out["train"].paths, out["train"].features):
        np.testing.assert_array_equal(x, expected[p])
    # new.jpg was skipped by a but embedded by b: it is not skipped in the merge
    assert out.skipped == [("train/x/bad.jpg", "train", "not an image")]


def test_merge_refuses_other_feature_spaces_naming_the_field(tmp_path):
    a = synthetic_cache(tmp_path / "a.h5", {"train": rows(3, "train/a")}, ["a", "b"])
    b = synthetic_cache(tmp_path / "b.h5", {"train": rows(3, "train/b")}, ["a", "b"], provenance(weights_sha256="cd" * 32))
    c = synthetic_cache(tmp_path / "c.h5", {"train": rows(3, "train/c")}, ["a", "b"],
                        provenance(transform=TransformSpec(resize=288).to_json()))
    out = tmp_path / "out.h5"
    line = assert_one_line_error(tlkit_cli("merge", out, a, b), f"weights_sha256: {'ab' * 32} vs {'cd' * 32}", "never merge")
    assert "transform" not in line
    line = assert_one_line_error(tlkit_cli("merge", out, a, c), "(transform: ")
    assert "weights_sha256" not in line
    assert not out.exists() and not list(tmp_path.glob(".out.h5.tmp-*"))
    # versions and data roots may differ: a note, not a refusal
    d = synthetic_cache(tmp_path / "d.h5", {"train": rows(3, "train/d")}, ["a", "b"], provenance(torch_version="2.9"))
    result = merge(out, [a, d])
    assert result.counts == {"train": 6} and any("torch_version" in n for n in result.notes)


def test_merge_output_rules_rerun_overwrite_and_adding_to_out(tmp_path):
    a = synthetic_cache(tmp_path / "a.h5", {"train": rows(3, "train/a")}, ["a", "b"])
    b = synthetic_cache(tmp_path / "b.h5", {"train": rows(3, "train/b")}, ["a", "b"])
    c = synthetic_cache(tmp_path / "c.h5", {"train": rows(2, "train/c")}, ["a", "b"])
    out = tmp_path / "out.h5"
    merge(out, [a, b])
    before = out.read_bytes()
    assert merge(out, [a, b]).up_to_date and out.read_bytes() == before  # a rerun changes nothing
    with pytest.raises(CacheError, match="already exists.*--overwrite"):
        merge(out, [a, c])
    assert out.read_bytes() == before
    assert merge(out, [out, c]).counts == {"train": 8}  # adding to OUT: list it as an input
    assert merge(out, [a], overwrite=True).counts == {"train": 3}
    (tmp_path / "text.h5").write_text("not a cache")
    assert_one_line_error(tlkit_cli("merge", tmp_path / "text.h5", a), "not an HDF5 file; refusing to overwrite")
    assert (tmp_path / "text.h5").read_text() == "not a cache"


def test_merge_takes_the_lock_and_refuses_damaged_inputs(small_cache, tmp_path):
    a = synthetic_cache(tmp_path / "a.h5", {"train": rows(3, "train/a")}, ["a", "b"])
    out = tmp_path / "out.h5"
    with CacheLock(out):
        with pytest.raises(CacheBusy, match="being written by pid"):
            merge(out, [a])
    bad = tmp_path / "bad.h5"
    bad.write_bytes(small_cache.read_bytes()[:-2000])
    assert_one_line_error(tlkit_cli("merge", out, small_cache, bad), "truncated or corrupt")
    flipped = tmp_path / "flipped.h5"
    shutil.copy2(small_cache, flipped)
    flip_byte(flipped, chunk_offset(flipped, "val/features") + 8)
    assert_one_line_error(tlkit_cli("merge", out, flipped, small_cache), "tlkit verify")  # its rows win: they are read
    assert not out.exists()


def test_streaming_merge_matches_a_dictionary_reference(tmp_path, monkeypatch):
    import tlkit.cache.assemble as assemble_module

    monkeypatch.setattr(assemble_module, "PATH_BLOCK", 7)  # many blocks, many merge rounds
    monkeypatch.setattr(assemble_module, "COPY_ROWS", 5)
    rng = np.random.default_rng(0)
    sources, expected = [], {}
    for k, classes in enumerate((["a", "b"], ["b", "c"], ["c"], ["a", "c"])):
        ids = rng.choice(120, size=int(rng.integers(0, 60)), replace=False)
        paths = [f"train/{i:04d}.jpg" for i in ids]
        if k % 2 == 0:
            paths.sort()  # finished caches are sorted; parts come in arrival order
        labels = rng.integers(0, len(classes), len(paths))
        feats = rng.standard_normal((len(paths), 512)).astype(np.float32)
        fmt = FORMAT if k % 2 == 0 else PART_FORMAT
        sources.append(write_source(tmp_path / f"s{k}.h5", {"train": (paths, labels, feats)}, classes, fmt=fmt))
        for p, y, x in zip(paths, labels, feats):
            expected.setdefault(p, (classes[y], x))
    out = tmp_path / "out.h5"
    counts = assemble_module.assemble(out, sources, ["a", "b", "c"], provenance().to_attrs())
    cache = load_cache(out)
    assert counts == {"train": len(expected)}
    assert cache["train"].paths.tolist() == sorted(expected)
    for p, y, x in zip(cache["train"].paths, cache["train"].labels, cache["train"].features):
        assert cache.class_names[y] == expected[p][0]
        np.testing.assert_array_equal(x, expected[p][1])
    assert verify_cache(out, progress=False).ok


# ---------------------------------------------------------------------------------------------
# readers while a writer works

def test_readers_during_an_embed_see_the_old_or_the_new_cache_never_a_mix(hymenoptera_small, small_cache, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(hymenoptera_small, data)
    later = tmp_path / "later"
    shutil.move(data / "val", later)
    out = tmp_path / "feats.h5"
    embed(data, out, weights="random", workers=0, **QUIET)
    shutil.move(later, data / "val")
    notebook = h5py.File(out, "r")  # a plain h5py reader that keeps the file open throughout
    old_rows = notebook["train/features"][...]
    proc = launcher.popen([sys.executable, "-m", "tlkit.cli", "embed", str(data), str(out), "--weights", "random",
                           "--workers", "0", "--batch-size", "1", "--checkpoint-every", "1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = set()
    try:
        while True:
            time.sleep(0.02)
            finished = proc.poll() is not None
            cache = load_cache(out)  # never raises: the old cache stays until the new one replaces it whole
            seen.add(tuple(len(cache[s]) for s in cache.splits))
            info = cache_info(out)
            assert info["finished_cache"]
            if finished:
                break
        second = tlkit_cli("embed", data, out, "--weights", "random")  # after it ended: nothing to do
        assert second.returncode == 0 and "up to date" in second.stdout
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, proc.stderr.read()
    assert seen <= {(16,), (16, 10)} and (16, 10) in seen
    np.testing.assert_array_equal(notebook["train/features"][...], old_rows)  # the open handle still reads the old file
    assert "val" not in notebook
    notebook.close()
    np.testing.assert_allclose(load_cache(out)["val"].features, load_cache(small_cache)["val"].features, atol=1e-5)


def test_second_embed_is_refused_while_one_runs(hymenoptera, tmp_path):
    out = tmp_path / "feats.h5"
    proc = launcher.popen([sys.executable, "-m", "tlkit.cli", "embed", str(hymenoptera), str(out),
                           "--weights", "random", "--workers", "0", "--batch-size", "1", "--checkpoint-every", "1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # leave a core for the second command
    try:
        while not (tmp_path / "feats.h5.parts" / "part-000000.h5").exists():
            assert proc.poll() is None, "the first embed ended too early"
            time.sleep(0.02)
        second = tlkit_cli("embed", hymenoptera, out, "--weights", "random")
        merged = tlkit_cli("merge", out, out)
    finally:
        proc.kill()
        proc.wait()
    assert_one_line_error(second, f"{out} is being written by pid {proc.pid}")
    assert_one_line_error(merged, "is being written by pid")
