"""Cached augmented views (``embed --views K --augment NAME``, ``fit-head --views``).

Embedding runs on ``hymenoptera_small`` (26 real images: 16 train, 10 val) with random weights and
K = 2 views; the head tests use synthetic features.
"""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest
import torch
from cli_helpers import assert_invoke_error, invoke
from heads_data import blobs
from PIL import Image
from test_faults import Running, assert_gone, part_files

from tlkit.cache import load_cache
from tlkit.data.transforms import TransformSpec
from tlkit.data.views import ViewSpec, view_seed
from tlkit.embed import embed
from tlkit.heads import LinearHead
from tlkit.heads.logreg import LogRegHead
from tlkit.train.views import TrainingRows, draw_views

QUIET = {"progress": False, "echo": lambda *_: None}
K = 2
EMBED = ("--weights", "random", "--no-progress")


# --- the views themselves ---------------------------------------------------------------------

def _image(seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_a_view_is_seeded_by_path_and_index_alone():
    assert view_seed("train/ants/a.jpg", 0) == view_seed("train/ants/a.jpg", 0)
    seeds = {view_seed(p, v) for p in ("train/ants/a.jpg", "train/ants/b.jpg") for v in range(3)}
    assert len(seeds) == 6 and all(0 <= s < 2**63 for s in seeds)
    views = ViewSpec(k=4, augment="tutorial").build_pixels(TransformSpec())
    image = _image()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = views(image, "train/ants/a.jpg")
    assert torch.equal(torch.get_rng_state(), before)  # the caller's generator is left as it was
    torch.manual_seed(999)  # whatever the global state, the same views
    assert torch.equal(views(image, "train/ants/a.jpg"), first)
    assert first.shape == (4, 224, 224, 3) and first.dtype == torch.uint8
    assert not torch.equal(views(image, "train/ants/b.jpg"), first)  # another path: other crops
    assert len({first[v].numpy().tobytes() for v in range(4)}) == 4  # four different crops


def test_flip_views_are_the_centre_crop_or_its_mirror_and_crop_views_never_mirror_it():
    spec, image = TransformSpec(), _image(1)
    centre = spec.build_pixels()(image).numpy()
    flips = ViewSpec(k=8, augment="flip").build_pixels(spec)(image, "x.jpg").numpy()
    mirrored = [np.array_equal(v, centre[:, ::-1]) for v in flips]
    assert all(m or np.array_equal(v, centre) for v, m in zip(flips, mirrored)) and any(mirrored) and not all(mirrored)
    crops = ViewSpec(k=3, augment="crop")
    assert "RandomHorizontalFlip" not in crops.params() and crops.params()["RandomResizedCrop"]["scale"] == [0.08, 1.0]
    assert ViewSpec.from_json(crops.to_json()) == crops and ViewSpec.from_json("") is None


# --- embedding with views ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def plain_cache(hymenoptera_small_cache):
    """hymenoptera_small embedded without views: the session's shared cache (conftest.py; read only)."""
    return hymenoptera_small_cache


@pytest.fixture(scope="module")
def views_cache(hymenoptera_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("views") / "views.h5"
    embed(hymenoptera_small, out, weights="random", workers=0, views=K, augment="tutorial", **QUIET)
    return out


@pytest.mark.slow
def test_views_are_stored_beside_unchanged_centre_crops_for_training_splits_only(plain_cache, views_cache):
    plain, views = load_cache(plain_cache), load_cache(views_cache)
    np.testing.assert_allclose(views["train"].features, plain["train"].features, atol=1e-5, rtol=0)
    assert views["train"].views.shape == (16, K, 512) and views["val"].views is None
    assert plain["train"].views is None
    # the views are other crops than the centre one
    assert np.abs(views["train"].views - views["train"].features[:, None]).max(axis=2).min() > 1e-3
    with h5py.File(views_cache) as f:
        ds = f["train/views"]
        assert ds.fletcher32 and ds.chunks[1:] == (K, 512) and ds.dtype == np.float32
        record = json.loads(f.attrs["views"])
        assert record["k"] == K and record["augment"] == "tutorial" and "RandomResizedCrop" in record["params"]
    with h5py.File(plain_cache) as f:
        assert "views" not in f.attrs  # a cache without views records what every cache did before
    assert views.provenance.view_count == K and plain.provenance.view_count == 0


@pytest.mark.slow
def test_info_shows_the_views(views_cache):
    result = invoke("info", views_cache)
    assert result.exit_code == 0, result.output
    assert f"views       {K} tutorial view(s) per training image, float32: train (16, {K}, 512)" in result.output
    assert f"--views {K} --augment tutorial" in result.output


@pytest.mark.slow
def test_verify_data_reproduces_the_views_and_catches_other_ones(hymenoptera_small, views_cache, tmp_path):
    result = invoke("verify", views_cache, "--data", hymenoptera_small, "--sample", "6", "--no-progress")
    assert result.exit_code == 0, result.output
    assert re.search(r"and \d+ of their views", result.output), result.output
    # Views of another image in their place: every checksum holds, only re-embedding can tell.
    altered = tmp_path / "altered.h5"
    altered.write_bytes(views_cache.read_bytes())
    with h5py.File(altered, "r+") as f:
        v = f["train/views"][...]
        f["train/views"][...] = v[::-1]
    assert invoke("verify", altered, "--no-progress").exit_code == 0
    result = invoke("verify", altered, "--data", hymenoptera_small, "--sample", "26", "--no-progress")
    assert result.exit_code == 1 and "stored view(s)" in result.output, result.output
    with h5py.File(altered, "r+") as f:
        f["train/views"][3, 1, 7] = np.nan
    result = invoke("verify", altered, "--no-progress")
    assert result.exit_code == 1 and "train/views: 1 row(s) hold NaN or inf: rows 3" in result.output, result.output


@pytest.mark.slow
def test_kill_9_with_resume_gives_identical_views(hymenoptera_small, views_cache, tmp_path):
    out = tmp_path / "views.h5"
    args = ("embed", hymenoptera_small, out, "--views", K, "--batch-size", "3", "--checkpoint-every", "3",
            "--workers", "1", *EMBED)
    first = Running(*args)
    try:
        workers = first.kill_main_after_parts(out)
        assert_gone(workers)
    finally:
        first.finish()
    # Resuming with another views setting is refused, in one line, and keeps the parts.
    kept = part_files(out)
    other = invoke("embed", hymenoptera_small, out, "--views", K + 1, *EMBED)
    assert_invoke_error(other, "views: --views 3 --augment tutorial vs --views 2 --augment tutorial")
    assert part_files(out) == kept
    rerun = Running(*args)
    rc, _, err = rerun.finish()
    assert rc == 0, err
    assert re.search(r"\(([1-9]\d*) already cached\)", err), err
    resumed, clean = load_cache(out), load_cache(views_cache)
    assert resumed["train"].paths.tolist() == clean["train"].paths.tolist()
    np.testing.assert_allclose(resumed["train"].views, clean["train"].views, atol=1e-5, rtol=0)
    np.testing.assert_allclose(resumed["train"].features, clean["train"].features, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_different_views_never_mix(plain_cache, views_cache, hymenoptera_small, tmp_path):
    for args, ours in (((), "none"), (("--views", K, "--augment", "crop"), f"--views {K} --augment crop")):
        target = tmp_path / f"copy{len(args)}.h5"
        target.write_bytes(views_cache.read_bytes())
        result = invoke("embed", hymenoptera_small, target, *args, *EMBED)
        assert_invoke_error(result, f"views: {ours} vs --views {K} --augment tutorial")
    result = invoke("merge", tmp_path / "merged.h5", views_cache, plain_cache)
    assert_invoke_error(result, "views: --views 2 --augment tutorial vs none", "never merge")
    assert not (tmp_path / "merged.h5").exists()
    # the same views merge, views and all
    result = invoke("merge", tmp_path / "same.h5", views_cache, tmp_path / "copy0.h5")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(load_cache(tmp_path / "same.h5")["train"].views, load_cache(views_cache)["train"].views)


@pytest.mark.slow
def test_a_cache_without_views_still_loads_grows_and_trains(plain_cache, hymenoptera_small, tmp_path):
    grown = tmp_path / "grown.h5"
    small = tmp_path / "data"
    for p in sorted(hymenoptera_small.rglob("*.jpg"))[:6]:
        (small / p.relative_to(hymenoptera_small)).parent.mkdir(parents=True, exist_ok=True)
        (small / p.relative_to(hymenoptera_small)).write_bytes(p.read_bytes())
    embed(small, grown, weights="random", workers=0, **QUIET)
    result = embed(hymenoptera_small, grown, weights="random", workers=0, **QUIET)  # incremental, no views
    assert result.already_cached == 6 and result.embedded == 20
    assert load_cache(grown)["train"].views is None
    result = invoke("fit-head", "--head", "linear", "--cache", plain_cache, "--out", tmp_path / "run", "--epochs", "2",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    assert "training_views" not in json.loads((tmp_path / "run" / "config.json").read_text())
    result = invoke("fit-head", "--head", "linear", "--cache", plain_cache, "--views", "on", "--out", tmp_path / "r2")
    assert_invoke_error(result, "--views on", "holds no augmented views")


@pytest.mark.slow
def test_fit_head_trains_on_the_views_and_evaluates_on_centre_crops(plain_cache, views_cache, tmp_path):
    def run(name, cache, *extra):
        result = invoke("fit-head", "--head", "linear", "--cache", cache, "--out", tmp_path / name, "--epochs", "3",
                        "--no-progress", *extra)
        assert result.exit_code == 0, result.output
        return json.loads((tmp_path / name / "config.json").read_text()), np.load(tmp_path / name / "predictions.npz")

    config, with_views = run("views", views_cache)
    assert config["training_views"]["k"] == K
    assert config["training_views"]["how"] == "one seeded draw per image and epoch"
    _, off = run("off", views_cache, "--views", "off")
    _, plain = run("plain", plain_cache)
    np.testing.assert_allclose(off["proba_final"], plain["proba_final"], atol=1e-5)  # off: the centre crops alone
    assert not np.allclose(with_views["proba_final"], plain["proba_final"], atol=1e-5)
    assert list(with_views["paths"]) == list(plain["paths"])  # evaluated on the same (val) rows


@pytest.mark.ray
@pytest.mark.slow
def test_ray_gives_identical_views(ray_cluster, hymenoptera_small, views_cache, tmp_path):
    out = tmp_path / "ray.h5"
    embed(hymenoptera_small, out, weights="random", workers=0, batch_size=3, backend="ray", views=K, **QUIET)
    ray_cache, local = load_cache(out), load_cache(views_cache)
    assert ray_cache.provenance.views == local.provenance.views
    assert ray_cache["train"].paths.tolist() == local["train"].paths.tolist()
    np.testing.assert_allclose(ray_cache["train"].views, local["train"].views, atol=1e-5, rtol=0)


# --- training on views ------------------------------------------------------------------------

def _views(n: int, k: int, seed: int = 7):
    X, y = blobs(n, 2, seed=seed)
    noise = np.random.default_rng(seed).normal(scale=0.8, size=(n, k, X.shape[1])).astype(np.float32)
    return X, y, X[:, None] + noise


def test_the_view_draw_is_seeded_per_seed_and_epoch():
    a = draw_views(3, 5, 100, 10)
    assert np.array_equal(a, draw_views(3, 5, 100, 10)) and a.min() >= 0 and a.max() <= 9
    assert not np.array_equal(a, draw_views(3, 6, 100, 10)) and not np.array_equal(a, draw_views(4, 5, 100, 10))
    assert np.array_equal(draw_views(3, 5, 40, 10), a[:40])  # image i's view does not depend on the others
    X, _, V = _views(12, 4)
    rows = TrainingRows(torch.from_numpy(X), torch.from_numpy(V))
    take = rows.epoch([0, 1], epoch=2)
    batch = torch.tensor([[0, 5, 7], [0, 5, 7]])
    got = take(batch).view(2, 3, -1).numpy()
    for slot, seed in enumerate([0, 1]):  # each slot reads its own seed's draw
        drawn = draw_views(seed, 2, 12, 4)
        np.testing.assert_array_equal(got[slot], V[[0, 5, 7], drawn[[0, 5, 7]]])
    plain = TrainingRows(torch.from_numpy(X)).epoch([0], 0)(torch.tensor([[3, 1]]))
    np.testing.assert_array_equal(plain.numpy(), X[[3, 1]])


def test_a_vectorised_run_on_views_equals_separate_runs_per_seed():
    X, y, V = _views(40, 3)
    Xv, yv = blobs(20, 2, seed=8)
    head = LinearHead(epochs=4, batch_size=4)
    together = head.fit_seeds(X, y, [0, 1, 2], eval_set=(Xv, yv), views=V)
    for fitted, seed in zip(together, [0, 1, 2]):
        alone = LinearHead(epochs=4, batch_size=4, seed=seed).fit(X, y, eval_set=(Xv, yv), views=V)
        np.testing.assert_allclose(fitted.evaluation_.final_proba, alone.evaluation_.final_proba, atol=1e-4)
        np.testing.assert_allclose(fitted.module_.weight.detach(), alone.module_.weight.detach(), atol=1e-5)
    without = LinearHead(epochs=4, batch_size=4, seed=0).fit(X, y, eval_set=(Xv, yv))
    assert not np.allclose(without.evaluation_.final_proba, together[0].evaluation_.final_proba, atol=1e-4)
    # views that are all the centre crop train exactly as no views
    same = LinearHead(epochs=4, batch_size=4, seed=0).fit(X, y, eval_set=(Xv, yv), views=np.repeat(X[:, None], 3, 1))
    np.testing.assert_allclose(same.evaluation_.final_proba, without.evaluation_.final_proba, atol=1e-6)


def test_logreg_trains_on_every_view_as_a_row_with_folds_grouped_by_image():
    X, y, V = _views(30, 4)
    head = LogRegHead(cv=3, Cs=5).fit(X, y, views=V)
    assert head.scaler_.n_samples_seen_ == 30 * 4
    np.testing.assert_allclose(head.scaler_.mean_, V.reshape(-1, V.shape[2]).mean(axis=0), rtol=1e-5, atol=1e-6)
    assert head.predict(X).shape == (30,)
    with pytest.raises(Exception, match="views must be"):
        LogRegHead(cv=3, Cs=5).fit(X, y, views=V[:10])
