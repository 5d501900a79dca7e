"""Tar-shard input: webdataset / img2dataset shards embed like the same images in a folder."""

from __future__ import annotations

import io
import re
import shutil
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from cli_helpers import assert_invoke_error, invoke
from shards_data import sample_key, write_shards
from test_faults import Running, assert_gone, temporary_files
from tlkit.cache import load_cache
from tlkit.embed import embed

pytest.importorskip("webdataset")
QUIET = {"progress": False, "echo": lambda *_: None}
ARGS = ("--weights", "random", "--no-progress")


@pytest.fixture(scope="module")
def folder_cache(hymenoptera_small_cache) -> Path:
    """hymenoptera_small (the folder) embedded once per session (conftest.py; read only)."""
    return hymenoptera_small_cache


@pytest.fixture(scope="module")
def shards(hymenoptera_small, tmp_path_factory) -> Path:
    """hymenoptera_small as shards of 5 images: train-0000{0..3}.tar, val-0000{0..1}.tar."""
    folder = tmp_path_factory.mktemp("shards")
    write_shards(hymenoptera_small, folder, per_shard=5)
    return folder


def assert_same_as_folder(tar_cache: Path, folder_cache: Path) -> None:
    """Same features, labels and class names, image for image (paths SHARD/KEY vs SPLIT/CLASS/FILE)."""
    a, b = load_cache(tar_cache), load_cache(folder_cache)
    assert a.class_names == b.class_names and list(a.splits) == list(b.splits)
    for split in b.splits:
        by_key = {sample_key(Path(p)): i for i, p in enumerate(b[split].paths)}
        keys = [p.rsplit("/", 1)[1] for p in a[split].paths]
        assert all(re.fullmatch(rf"{split}-\d{{5}}\.tar/{re.escape(k)}", p) for k, p in zip(keys, a[split].paths))
        order = [by_key[k] for k in keys]
        assert sorted(order) == list(range(len(b[split])))  # every image, once
        np.testing.assert_array_equal(a[split].labels, b[split].labels[order])
        np.testing.assert_array_equal(a[split].features, b[split].features[order])


def test_brace_pattern_equals_the_folder(shards, folder_cache, tmp_path):
    out = tmp_path / "tar.h5"
    result = invoke("embed", f"{shards}/{{train-{{00000..00003}},val-{{00000..00001}}}}.tar", out, *ARGS, "--workers", 2)
    assert result.exit_code == 0, result.output
    assert_same_as_folder(out, folder_cache)
    assert load_cache(out).skipped == []


def test_a_folder_of_shards_with_json_labels_and_split_field(hymenoptera_small, folder_cache, tmp_path):
    folder = tmp_path / "img2dataset"
    write_shards(hymenoptera_small, folder, per_shard=7, label="json", split_in="json")
    out = tmp_path / "tar.h5"
    result = invoke("embed", folder, out, *ARGS, "--workers", 0, "--label-key", "label", "--split-key", "split")
    assert result.exit_code == 0, result.output
    a, b = load_cache(out), load_cache(folder_cache)
    assert a.class_names == b.class_names
    for split in b.splits:
        keys = sorted(p.rsplit("/", 1)[1] for p in a[split].paths)
        assert keys == sorted(sample_key(Path(p)) for p in b[split].paths)
        assert sorted(a[split].features.sum(axis=1).tolist()) == sorted(b[split].features.sum(axis=1).tolist())


def test_truncated_and_broken_members_are_skipped_and_reported(shards, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for shard in shards.glob("train-*.tar"):
        (data / shard.name).write_bytes(shard.read_bytes())
    # a member whose bytes are no image, inside an intact tar
    with tarfile.open(data / "train-00009.tar", "w") as tar:
        for name, payload in (("broken.jpg", b"not a jpeg at all"), ("broken.cls", b"ants")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    # a tar cut off in the middle of its last image (a copy that stopped short)
    last = data / "train-00003.tar"
    with tarfile.open(last) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(".jpg")]
    cut = members[-1].offset_data + members[-1].size // 2
    last.write_bytes(last.read_bytes()[:cut])
    out = tmp_path / "tar.h5"
    result = invoke("embed", data, out, *ARGS, "--workers", 0)
    assert result.exit_code == 0, result.output
    cache = load_cache(out)
    skipped = {path: reason for path, _, reason in cache.skipped}
    truncated = f"train-00003.tar/{members[-1].name.rsplit('.', 1)[0]}"
    assert set(skipped) == {truncated, "train-00009.tar/broken"}
    assert "truncated tar member" in skipped[truncated] and "not an image" in skipped["train-00009.tar/broken"]
    assert len(cache["train"]) == 16 - 1  # every other image of the train shards is in
    assert f"skipped {truncated}" in result.output


def test_kill_9_and_resume_on_shards_equals_an_uninterrupted_run(shards, tmp_path):
    pattern = f"{shards}/{{train,val}}-{{00000..00003}}.tar"  # val-00002/3 do not exist: noted, not fatal
    reference = tmp_path / "reference.h5"
    embed(pattern, reference, weights="random", workers=0, **QUIET)
    out = tmp_path / "feats.h5"
    args = ("embed", pattern, out, *ARGS, "--workers", "1", "--batch-size", "2", "--checkpoint-every", "4")
    first = Running(*args)
    try:
        workers = first.kill_main_after_parts(out)
        rerun = Running(*args)
        assert_gone(workers)
        rc, _, err = rerun.finish()
    finally:
        first.finish()
    assert rc == 0, err
    assert re.search(r"\(([1-9]\d*) already cached\)", err), err
    assert "note: ignored" in err and "val-00002.tar (does not exist)" in err
    a, b = load_cache(out), load_cache(reference)
    for split in b.splits:
        assert a[split].paths.tolist() == b[split].paths.tolist()
        np.testing.assert_array_equal(a[split].labels, b[split].labels)
        np.testing.assert_allclose(a[split].features, b[split].features, atol=1e-5, rtol=0)
    assert not temporary_files(tmp_path)


def test_ray_cuts_shards_at_tar_files(shards):
    from tlkit.data.shards import discover_shards
    from tlkit.embed.ray_backend import split_shards
    from tlkit.embed.runner import WorkItem

    index = discover_shards(shards)
    items = [WorkItem(file=index.source(it.path), path=it.path, split=it.split, label=0) for it in index.items]
    pieces = split_shards(items, n_shards=2)
    assert [{it.file.shard for it in piece} for piece in pieces] == [{str(p.resolve())} for p in sorted(shards.glob("*.tar"))]
    assert sum(len(p) for p in pieces) == len(items) == 26


def test_bad_shard_input_is_one_line(shards, tmp_path):
    assert_invoke_error(invoke("embed", f"{tmp_path}/none-{{000..009}}.tar", tmp_path / "a.h5", *ARGS),
                        "matches no file", "10 name(s)")
    unlabelled = tmp_path / "unlabelled.tar"
    with tarfile.open(unlabelled, "w") as tar:
        source = next(shards.glob("train-*.tar"))
        with tarfile.open(source) as src:
            for member in src.getmembers():
                if member.name.endswith(".jpg"):
                    tar.addfile(member, src.extractfile(member))
    assert_invoke_error(invoke("embed", unlabelled, tmp_path / "b.h5", *ARGS), "has no label", ".cls", "--label-key")
    assert_invoke_error(invoke("embed", unlabelled, tmp_path / "c.h5", *ARGS, "--label-key", "label"),
                        "has no field 'label'")
    not_tar = tmp_path / "fake.tar"
    not_tar.write_bytes(b"\x00garbage" * 10)
    assert_invoke_error(invoke("embed", not_tar, tmp_path / "d.h5", *ARGS))
    folder = tmp_path / "imgs" / "ants"
    folder.mkdir(parents=True)
    assert_invoke_error(invoke("embed", folder.parent, tmp_path / "e.h5", *ARGS, "--label-key", "x"), "tar shards only")
    assert not list(tmp_path.glob("*.h5"))


def test_which_inputs_are_read_as_shards(hymenoptera_small, shards, tmp_path):
    from tlkit.data.shards import looks_like_shards

    assert looks_like_shards(shards) and looks_like_shards(next(shards.glob("*.tar")))
    assert looks_like_shards(f"{tmp_path}/x-{{000..009}}.tar")  # a pattern, even before it matches anything
    assert not looks_like_shards(hymenoptera_small)
    mixed = tmp_path / "mixed" / "ants"
    mixed.mkdir(parents=True)
    (mixed / "a.jpg").write_bytes((hymenoptera_small / "train" / "ants").glob("*.jpg").__next__().read_bytes())
    (mixed.parent / "backup.tar").write_bytes(b"")
    assert not looks_like_shards(mixed.parent)  # an image folder with a stray .tar stays an image folder


def test_verify_data_re_embeds_rows_from_the_shards(shards, tmp_path):
    """verify --data takes the shard pattern (or folder) the cache came from, as for a folder cache."""
    pattern = f"{shards}/{{train-{{00000..00003}},val-{{00000..00001}}}}.tar"
    cache = tmp_path / "tar.h5"
    embed(pattern, cache, weights="random", workers=0, **QUIET)
    good = invoke("verify", cache, "--data", pattern, "--sample", "5", "--no-progress")
    assert good.exit_code == 0 and "re-embedded 5 sampled image(s)" in good.output, good.output
    moved = tmp_path / "moved"  # the shards elsewhere, given as a folder: paths are relative to it
    shutil.copytree(shards, moved)
    assert "re-embedded 2 sampled" in invoke("verify", cache, "--data", moved, "--sample", "2", "--no-progress").output

    tampered = tmp_path / "tampered.h5"  # one row rewritten through h5py: its checksum stays valid
    shutil.copy(cache, tampered)
    with h5py.File(tampered, "r+") as f:
        f["val/features"][2] = f["val/features"][2] * 1.05
        edited = f["val/paths"].asstr()[2]
    bad = invoke("verify", tampered, "--data", pattern, "--sample", "26", "--no-progress")
    problems = [line for line in bad.output.splitlines() if line.startswith("PROBLEM")]
    assert bad.exit_code == 1 and len(problems) == 1, bad.output  # the 25 others reproduce
    assert problems[0].startswith(f"PROBLEM  {edited}: stored features differ from a fresh embedding"), problems


def test_verify_data_with_shards_missing_or_moved_is_one_line(shards, tmp_path):
    cache = tmp_path / "tar.h5"
    embed(shards, cache, weights="random", workers=0, **QUIET)

    def problems(data) -> list[str]:
        result = invoke("verify", cache, "--data", data, "--sample", "26", "--no-progress")
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        return [line for line in result.output.splitlines() if line.startswith("PROBLEM")]

    assert problems(f"{tmp_path}/gone-{{00000..00003}}.tar") == [
        f"PROBLEM  cannot re-embed from {tmp_path}/gone-{{00000..00003}}.tar: the shard pattern "
        f"{tmp_path}/gone-{{00000..00003}}.tar matches no file (4 name(s) expanded, none exists)"]
    nested = tmp_path / "nested" / "train"  # moved one folder down: SHARD/KEY no longer names them
    shutil.copytree(shards, nested)
    [line] = problems(nested.parent)
    assert "6 of the 6 shard(s)" in line and "26 sampled row(s) cannot be re-embedded" in line, line
    only_train = problems(f"{shards}/train-{{00000..00003}}.tar")  # the val shards are not given
    assert len(only_train) == 1 and "2 of the 6 shard(s)" in only_train[0] and "10 sampled row(s)" in only_train[0]
