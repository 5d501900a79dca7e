"""Stage one end to end: the cache contract, resume, incremental runs, refusals, bad input."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchvision

import launcher
from cli_helpers import assert_invoke_error, assert_one_line_error, invoke, tlkit_cli
from synthetic import make_class_folder, save_bomb, save_mode, save_not_an_image, save_truncated, save_zero_bytes
from tlkit.cache import load_cache
from tlkit.data import TransformSpec, load_rgb
from tlkit.embed import embed
from tlkit.errors import CacheBusy, CacheError, WeightsError
from tlkit.weights import Weights, state_dict_sha256

QUIET = {"progress": False, "echo": lambda *_: None}


def caches_equal(a: Path, b: Path, atol: float = 1e-5) -> None:
    ca, cb = load_cache(a), load_cache(b)
    assert ca.class_names == cb.class_names
    assert list(ca.splits) == list(cb.splits)
    for split in ca.splits:
        assert ca[split].paths.tolist() == cb[split].paths.tolist()
        np.testing.assert_array_equal(ca[split].labels, cb[split].labels)
        np.testing.assert_allclose(ca[split].features, cb[split].features, atol=atol, rtol=0)
    pa, pb = ca.provenance.to_attrs(), cb.provenance.to_attrs()
    for volatile in ("created",):
        pa.pop(volatile), pb.pop(volatile)
    assert pa == pb
    assert ca.skipped == cb.skipped


@pytest.fixture(scope="module")
def small_cache(hymenoptera_small, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("embed") / "feats.h5"
    embed(hymenoptera_small, out, weights="random", batch_size=8, workers=1, **QUIET)
    return out


def test_features_equal_direct_torchvision_forward(hymenoptera_small, small_cache):
    cache = load_cache(small_cache)
    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(Weights.random(0).load().state_dict)
    model.fc = torch.nn.Identity()
    model.eval()
    transform = TransformSpec().build()
    for split in ("train", "val"):
        arrays = cache[split]
        batch = torch.stack([transform(load_rgb(hymenoptera_small / p)) for p in arrays.paths])
        with torch.no_grad():
            expected = model(batch).numpy()
        assert arrays.features.dtype == np.float32 and arrays.features.shape == (len(arrays.paths), 512)
        np.testing.assert_allclose(arrays.features, expected, atol=1e-5, rtol=0)


def test_cache_follows_the_documented_contract_with_plain_h5py(hymenoptera_small, small_cache):
    # This is the README's plain-h5py recipe, verbatim in spirit.
    with h5py.File(small_cache, "r") as f:
        assert f.attrs["format"] == "tlkit-feature-cache" and f.attrs["schema_version"] == 1
        assert bool(f.attrs["complete"]) is True
        class_names = list(f.attrs["class_names"])
        assert class_names == ["ants", "bees"]
        assert list(f.attrs["splits"]) == ["train", "val"]
        X = f["train/features"][:]
        y = f["train/labels"][:]
        paths = f["train/paths"].asstr()[:]
        assert X.shape == (16, 512) and X.dtype == np.float32 and y.dtype == np.int64
        assert all((hymenoptera_small / p).is_file() for p in paths)
        assert [class_names[label] for label in y] == [p.split("/")[1] for p in paths]
        for key in ("backbone", "layer", "weights_id", "weights_sha256", "transform", "tlkit_version",
                    "torch_version", "torchvision_version", "created"):
            assert key in f.attrs, key
        assert f.attrs["weights_id"] == "random:seed=0"
        assert f.attrs["weights_sha256"] == state_dict_sha256(Weights.random(0).load().state_dict)
        assert f.attrs["torch_version"] == torch.__version__
        assert TransformSpec.from_json(f.attrs["transform"]) == TransformSpec()
        assert f["train/features"].fletcher32


def test_tlkit_cache_reader_matches(small_cache):
    cache = load_cache(small_cache)
    assert cache.class_names == ["ants", "bees"] and len(cache["val"]) == 10
    assert cache.provenance.backbone == "resnet18" and cache.provenance.layer == "avgpool"
    with pytest.raises(CacheError, match="no split 'test'"):
        cache["test"]


def test_rerun_is_a_no_op(hymenoptera_small, small_cache, tmp_path):
    copy = tmp_path / "feats.h5"
    shutil.copy2(small_cache, copy)
    before = copy.stat().st_mtime_ns
    result = embed(hymenoptera_small, copy, weights="random", **QUIET)
    assert result.up_to_date and result.embedded == 0 and result.already_cached == 26
    assert copy.stat().st_mtime_ns == before


def test_incremental_embeds_only_new_images(hymenoptera_small, small_cache, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(hymenoptera_small, data)
    removed = sorted((data / "val" / "bees").iterdir())[:3]
    moved = tmp_path / "later"
    moved.mkdir()
    for p in removed:
        shutil.move(p, moved / p.name)
    out = tmp_path / "feats.h5"
    first = embed(data, out, weights="random", **QUIET)
    assert first.embedded == 23
    for p in moved.iterdir():
        shutil.move(p, data / "val" / "bees" / p.name)
    (data / "test" / "wasps").mkdir(parents=True)  # a new class in a new split shifts nothing already stored
    save_mode(data / "test" / "wasps" / "w.png", "RGB")
    second = embed(data, out, weights="random", **QUIET)
    assert second.embedded == 4 and second.already_cached == 23
    fresh = tmp_path / "fresh.h5"
    embed(data, fresh, weights="random", **QUIET)
    caches_equal(out, fresh)
    assert load_cache(out).class_names == ["ants", "bees", "wasps"]


def test_other_weights_or_transform_are_refused(hymenoptera_small, small_cache, tmp_path):
    copy = tmp_path / "feats.h5"
    shutil.copy2(small_cache, copy)
    original = copy.read_bytes()
    with pytest.raises(CacheError, match="weights_sha256"):
        embed(hymenoptera_small, copy, weights="random", seed=1, **QUIET)
    with h5py.File(copy, "r+") as f:  # pretend the cache was made with another transform
        f.attrs["transform"] = TransformSpec(resize=288).to_json()
    with pytest.raises(CacheError, match="transform"):
        embed(hymenoptera_small, copy, weights="random", **QUIET)
    shutil.copy2(small_cache, copy)
    proc = tlkit_cli("embed", hymenoptera_small, copy, "--weights", "random", "--seed", "7")
    assert_one_line_error(proc, "feature spaces never mix")
    assert copy.read_bytes() == original


def test_state_dict_file_weights(hymenoptera_small, small_cache, tmp_path):
    weights_file = tmp_path / "my-resnet.pt"
    torch.save(Weights.random(0).load().state_dict, weights_file)
    out = tmp_path / "feats.h5"
    embed(hymenoptera_small, out, weights=str(weights_file), **QUIET)
    cache = load_cache(out)
    assert cache.provenance.weights_id == "file:my-resnet.pt"
    # same tensors, same fingerprint, same features as --weights random --seed 0
    assert cache.provenance.weights_sha256 == load_cache(small_cache).provenance.weights_sha256
    np.testing.assert_allclose(cache["val"].features, load_cache(small_cache)["val"].features, atol=1e-6)
    # ...so appending to the random-weights cache is allowed, another state dict is not
    other = tmp_path / "other.pt"
    torch.save(Weights.random(5).load().state_dict, other)
    with pytest.raises(CacheError, match="weights_sha256"):
        embed(hymenoptera_small, out, weights=str(other), **QUIET)


@pytest.mark.parametrize("content, message", [
    (b"not a torch file", "cannot load weights"),
    (None, "not a ResNet-18 state_dict"),
])
def test_bad_weights_files(tmp_path, hymenoptera_small, content, message):
    path = tmp_path / "w.pt"
    if content is None:
        torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    else:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=message):
        embed(hymenoptera_small, tmp_path / "f.h5", weights=str(path), **QUIET)
    assert not (tmp_path / "f.h5").exists()


def test_imagenet_offline_fails_fast_with_instructions(hymenoptera_small, tmp_path):
    start = time.monotonic()
    proc = tlkit_cli("embed", hymenoptera_small, tmp_path / "f.h5", env={"TORCH_HOME": str(tmp_path / "torch")})
    assert time.monotonic() - start < 60
    assert_one_line_error(proc, "resnet18-f37072fd.pth", str(tmp_path / "torch" / "hub" / "checkpoints"), "--weights")
    assert not (tmp_path / "f.h5").exists()


def test_imagenet_file_with_wrong_hash_is_refused(hymenoptera_small, tmp_path):
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(Weights.random(0).load().state_dict, checkpoints / "resnet18-f37072fd.pth")
    proc = tlkit_cli("embed", hymenoptera_small, tmp_path / "f.h5", env={"TORCH_HOME": str(tmp_path / "torch")})
    assert_one_line_error(proc, "does not match the sha256 prefix f37072fd")


# ---------------------------------------------------------------------------------------------
# weights as a value: --weights in, provenance id out, and back

@pytest.mark.parametrize("spec, seed, weights_id", [
    ("imagenet", 0, "torchvision:ResNet18_Weights.IMAGENET1K_V1"),
    ("random", 0, "random:seed=0"),
    ("random", 7, "random:seed=7"),
    ("random:3", 7, "random:seed=3"),  # a seed in the value wins over --seed
    ("random:-2", 0, "random:seed=-2"),
])
def test_weights_parse_and_id_round_trip(spec, seed, weights_id):
    weights = Weights.parse(spec, seed=seed)
    assert weights.id == weights_id
    assert Weights.from_id(weights_id) == weights
    assert Weights.from_id(weights_id).id == weights_id
    assert weights.known and weights.transform == TransformSpec()


def test_weights_file_round_trip_names_the_file_but_needs_its_path(tmp_path):
    path = tmp_path / "my-resnet.pt"
    torch.save(Weights.random(2).load().state_dict, path)
    weights = Weights.parse(str(path))
    assert weights.kind == "file" and weights.path == path and weights.id == "file:my-resnet.pt"
    assert weights.load().sha256 == Weights.random(2).load().sha256  # same tensors, same fingerprint
    by_id = Weights.from_id(weights.id)
    assert by_id.name == "my-resnet.pt" and by_id.path is None and not by_id.known
    with pytest.raises(WeightsError, match="known only by its name; pass --weights PATH"):
        by_id.load()


def test_random_weights_are_seeded_and_leave_the_global_generator_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = Weights.random(0).load(), Weights.random(0).load(), Weights.random(1).load()
    assert torch.rand(1) == expected_next
    assert a.sha256 == b.sha256 == state_dict_sha256(b.state_dict) != c.sha256
    assert a.id == "random:seed=0"


@pytest.mark.parametrize("weights_id", ["", "imagenet", "random:seed=x", "torchvision:", "file:", "http://x/y.pth"])
def test_weights_from_a_malformed_id_is_a_weights_error(weights_id):
    with pytest.raises(WeightsError, match="is not a weights id"):
        Weights.from_id(weights_id)


def test_unknown_torchvision_weights_parse_but_cannot_load():
    weights = Weights.from_id("torchvision:ResNet18_Weights.SOMETHING_NEWER")
    assert weights.id == "torchvision:ResNet18_Weights.SOMETHING_NEWER" and not weights.known
    with pytest.raises(WeightsError, match="not known to this tlkit"):
        weights.load()


def test_named_weights_registry_carries_torchvisions_url_and_hash():
    from tlkit.weights import PRETRAINED

    entry = PRETRAINED["imagenet"]
    assert entry.url == torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert entry.file_name == "resnet18-f37072fd.pth" and entry.sha256_prefix == "f37072fd"
    assert Weights.parse("imagenet").entry is entry


@pytest.mark.parametrize("spec", ["imagenett", "random:x", "random:seed=1"])
def test_bad_weights_value_is_one_line(spec, hymenoptera_small, tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="is neither imagenet, random nor an existing state_dict file"):
        Weights.parse(spec)
    # in this process (a fresh one costs seconds of imports; the real entry point is run by the tests around);
    # embed sets OMP_WAIT_POLICY in os.environ, which must not leak into later tests' subprocesses
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    assert_invoke_error(invoke("embed", hymenoptera_small, tmp_path / "f.h5", "--weights", spec), f"--weights {spec!r} is neither")
    assert not (tmp_path / "f.h5").exists()


@pytest.fixture
def messy_data(tmp_path) -> Path:
    root = tmp_path / "messy"
    make_class_folder(root / "train" / "a", 3, seed=1)
    make_class_folder(root / "train" / "b", 3, seed=2)
    save_truncated(root / "train" / "a" / "truncated.jpg")
    save_zero_bytes(root / "train" / "b" / "empty.png")
    save_not_an_image(root / "train" / "b" / "text.jpg")
    save_bomb(root / "train" / "a" / "bomb.png")
    return root


def test_bad_files_are_skipped_reported_and_recorded(messy_data, tmp_path):
    out = tmp_path / "feats.h5"
    proc = tlkit_cli("embed", messy_data, out, "--weights", "random", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for name, reason in [("truncated.jpg", "truncated"), ("empty.png", "empty file"),
                         ("text.jpg", "not an image"), ("bomb.png", "decompression bomb")]:
        assert any(name in line and reason in line for line in proc.stdout.splitlines()), (name, proc.stdout)
    assert "embedded 6, skipped 4" in proc.stdout and "images/s" in proc.stdout
    cache = load_cache(out)
    assert len(cache["train"]) == 6
    assert sorted(p for p, _, _ in cache.skipped) == [
        "train/a/bomb.png", "train/a/truncated.jpg", "train/b/empty.png", "train/b/text.jpg"]
    # a re-run tries the skipped files again but changes nothing else
    again = embed(messy_data, out, weights="random", **QUIET)
    assert again.embedded == 0 and len(again.skipped) == 4


def test_strict_fails_before_writing_anything(messy_data, tmp_path):
    out = tmp_path / "feats.h5"
    proc = tlkit_cli("embed", messy_data, out, "--weights", "random", "--strict")
    assert_one_line_error(proc, "--strict", "4 unreadable", "nothing written")
    assert not out.exists() and not (tmp_path / "feats.h5.parts").exists()


@pytest.mark.parametrize("case", ["missing-data", "empty-data", "not-hdf5", "foreign-hdf5", "output-is-folder",
                                  "unwritable-parent", "no-gpu"])
def test_bad_arguments_give_one_line_and_keep_files(case, hymenoptera_small, tmp_path, monkeypatch):
    data, out, extra = hymenoptera_small, tmp_path / "feats.h5", []
    expect = {
        "missing-data": "does not exist", "empty-data": "no images found", "not-hdf5": "not an HDF5 file",
        "foreign-hdf5": "not a tlkit cache", "output-is-folder": "is a folder", "unwritable-parent": "cannot create",
        "no-gpu": "no CUDA GPU",
    }[case]
    if case == "missing-data":
        data = tmp_path / "nope"
    elif case == "empty-data":
        data = tmp_path / "empty"
        (data / "train" / "ants").mkdir(parents=True)
    elif case == "not-hdf5":
        out.write_text("precious notes")
    elif case == "foreign-hdf5":
        with h5py.File(out, "w") as f:
            f["x"] = np.arange(3)
    elif case == "output-is-folder":
        out.mkdir()
    elif case == "unwritable-parent":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "feats.h5"
    elif case == "no-gpu":
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
        extra = ["--device", "cuda"]
    before = out.read_bytes() if out.is_file() else None
    if case == "missing-data":  # the real entry point in a fresh process, once
        assert_one_line_error(tlkit_cli("embed", data, out, "--weights", "random", *extra), expect)
    else:  # the same command in this process: the same one line, without seconds of imports each
        monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))  # embed sets it: undo after
        assert_invoke_error(invoke("embed", data, out, "--weights", "random", *extra), expect)
    if before is not None:
        assert out.read_bytes() == before


def test_starting_the_cli_loads_no_torch_so_embed_can_set_the_openmp_policy_first(tmp_path):
    # OMP_WAIT_POLICY is read once, when torch loads: `tlkit embed` sets it in its command function,
    # which only works while registering the commands (tlkit.embed.cli included) imports no torch.
    code = ("import sys, tlkit.cli\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    code = ("import os, sys\nfrom tlkit.cli import main\n"
            "try:\n    main(['embed', sys.argv[1], sys.argv[2], '--weights', 'nope'])\n"
            "except SystemExit:\n    print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "nope"), str(tmp_path / "f.h5")], capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"})
    assert proc.stdout.strip() == "PASSIVE True", proc.stderr


def test_second_writer_is_refused(hymenoptera_small, tmp_path):
    from tlkit.cache.lock import CacheLock

    out = tmp_path / "feats.h5"
    with CacheLock(out):
        with pytest.raises(CacheBusy, match="being written by pid"):
            embed(hymenoptera_small, out, weights="random", **QUIET)
    embed(hymenoptera_small, out, weights="random", **QUIET)  # released: works
    assert len(load_cache(out)["train"]) == 16


def test_kill_9_then_rerun_equals_uninterrupted(hymenoptera_small, small_cache, tmp_path):
    out = tmp_path / "feats.h5"
    parts = tmp_path / "feats.h5.parts"
    cmd = [sys.executable, "-m", "tlkit.cli", "embed", str(hymenoptera_small), str(out), "--weights", "random",
           "--batch-size", "2", "--workers", "0", "--checkpoint-every", "2"]
    proc = launcher.popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(parts.glob("part-*.h5"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_parts = len(list(parts.glob("part-*.h5")))
    assert 3 <= n_parts < 13, "the kill should land mid-run"
    # the unfinished cache is never taken for a finished one
    assert not out.exists()
    with pytest.raises(CacheError, match="unfinished"):
        load_cache(out)
    result = embed(hymenoptera_small, out, weights="random", **QUIET)
    assert result.already_cached >= 2 * n_parts and result.embedded == 26 - result.already_cached
    assert not parts.exists()
    caches_equal(out, small_cache)


def test_fast_decode_is_recorded_in_the_transform_and_is_its_own_feature_space(tmp_path):
    """--fast-decode changes the pixels of large JPEGs only, says so in the cache's transform, and a
    run without it into that cache is refused (and the other way round); the default spec's text
    is what caches have always recorded."""
    data = tmp_path / "data"
    for k, size in enumerate([(1600, 1200), (640, 480), (300, 200)]):
        save_mode(data / "train" / "a" / f"{k}.jpg", "RGB", size=size, seed=k)
        save_mode(data / "train" / "b" / f"{k}.jpg", "RGB", size=size, seed=10 + k)
    plain, fast = tmp_path / "plain.h5", tmp_path / "fast.h5"
    embed(data, plain, weights="random", workers=0, **QUIET)
    proc = tlkit_cli("embed", data, fast, "--weights", "random", "--workers", "0", "--fast-decode")
    assert proc.returncode == 0, proc.stderr
    a, b = load_cache(plain), load_cache(fast)
    assert "jpeg_draft" not in a.provenance.transform
    assert TransformSpec.from_json(b.provenance.transform) == TransformSpec(jpeg_draft=True)
    assert a["train"].paths.tolist() == b["train"].paths.tolist()
    same = np.all(a["train"].features == b["train"].features, axis=1)
    big = np.array(["/0.jpg" in p for p in a["train"].paths])  # only 1600x1200 is >= 2x the resize target
    assert not same[big].any() and same[~big].all()
    before = fast.read_bytes()
    proc = tlkit_cli("embed", data, fast, "--weights", "random")
    assert_one_line_error(proc, "transform")
    assert fast.read_bytes() == before
    with pytest.raises(CacheError, match="transform"):
        embed(data, plain, weights="random", fast_decode=True, **QUIET)
