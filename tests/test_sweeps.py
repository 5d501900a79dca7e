"""Sweeps (``fit-head --grid``, :func:`tlkit.heads.search`): chosen on training data only, the vectorised pass
equals separate fits and scikit-learn's GridSearchCV, the svc/mlp baselines, and bad input."""

from __future__ import annotations

import csv
import json
import signal

import h5py
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from cli_helpers import assert_invoke_error, invoke
from heads_data import blobs, write_cache
from test_faults import Running
from tlkit.data.views import ViewSpec
from tlkit.heads import BottleneckHead, HeadError, LinearHead, MLPHead, QuantumHead, SVCHead, load_head, search
from tlkit.heads.logreg import LogRegHead
from tlkit.runs import load_run
from tlkit.train.views import TrainingRows


@pytest.fixture(scope="module")
def data():
    """Noisy blobs; 57 rows so that the folds differ in size (and batch 4 leaves short last batches)."""
    X, y = blobs(57, 2, seed=1, noise=2.5)
    return X, np.array(["ants", "bees"])[y]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    X, y = blobs(40, 2, seed=1, noise=2.5)
    X_val, y_val = blobs(15, 2, seed=2, noise=2.5)
    root = tmp_path_factory.mktemp("sweep_cache")
    return write_cache(root / "feats.h5", {"train": (X, y), "val": (X_val, y_val)}, ["ants", "bees"]), (X, y, X_val, y_val)


def separate_fold_scores(head, X, y, configs, cv, seeds, fold_seed=0):
    """Every configuration x fold x seed as its own fit, scored on the held-out fold at the final epoch."""
    folds = StratifiedKFold(cv, shuffle=True, random_state=fold_seed).split(X, y)
    scores = np.zeros((len(configs), cv, len(seeds)))
    for k, (train, test) in enumerate(folds):
        for c, params in enumerate(configs):
            for j, seed in enumerate(seeds):
                fitted = clone(head).set_params(**params, seed=seed).fit(X[train], y[train])
                scores[c, k, j] = fitted.score(X[test], y[test])  # the final epoch's accuracy
    return scores


# --- the vectorised pass is separate fits, and GridSearchCV ----------------------------------------

@pytest.mark.parametrize("head, grid", [
    (LinearHead(batch_size=4), {"lr": [0.003, 0.05], "epochs": [2, 3], "weight_decay": [0.0, 0.1]}),
    (QuantumHead(epochs=2, batch_size=4), {"lr": [0.01, 0.1], "q_delta": [0.01, 1.0], "depth": [1, 2]}),
    (BottleneckHead(epochs=2, batch_size=4, optimizer="adam"), {"lr": [0.01, 0.1], "n_qubits": [2, 3]}),
], ids=["linear", "quantum", "bottleneck"])
def test_vectorised_fold_scores_equal_separate_fits(head, grid, data):
    X, y = data
    result = search(head, X, y, grid, cv=3, seeds=[0, 5])
    assert result.scores.shape == (len(result.configs), 3, 2)
    expected = separate_fold_scores(head, X, y, result.configs, 3, [0, 5])
    np.testing.assert_array_equal(result.scores, expected)
    assert len({tuple(s.ravel()) for s in result.scores}) > 1  # the configurations really differ
    assert np.allclose(result.cv_results_["mean_test_score"], expected.mean(axis=(1, 2)))


def test_linear_fold_scores_equal_grid_search_cv(data):
    X, y = data
    grid = {"lr": [0.001, 0.01, 0.1], "epochs": [1, 3]}
    ours = search(LinearHead(batch_size=4, seed=2), X, y, grid, cv=4)
    theirs = GridSearchCV(LinearHead(batch_size=4, seed=2), grid,
                          cv=StratifiedKFold(4, shuffle=True, random_state=2)).fit(X, y)
    assert ours.configs == list(theirs.cv_results_["params"])
    for key in [f"split{k}_test_score" for k in range(4)] + ["mean_test_score", "std_test_score"]:
        assert np.abs(ours.cv_results_[key] - theirs.cv_results_[key]).max() <= 1e-6, key
    assert list(ours.cv_results_["rank_test_score"]) == list(theirs.cv_results_["rank_test_score"])
    assert ours.best_params_ == theirs.best_params_ and ours.best_index_ == theirs.best_index_


def test_ties_go_to_the_earlier_configuration(data):
    X, y = data
    result = search(LinearHead(epochs=1), X, y, {"momentum": [0.5, 0.5 + 1e-12]}, cv=3)  # the same scores
    assert result.cv_results_["mean_test_score"][0] == result.cv_results_["mean_test_score"][1]
    assert list(result.cv_results_["rank_test_score"]) == [1, 1] and result.best_params_ == {"momentum": 0.5}


def test_scikit_learn_heads_search_one_fit_after_another(data):
    X, y = data
    result = search(SVCHead(), X, y, {"C": [0.1, 10.0], "gamma": [None, 0.01]}, cv=3)
    np.testing.assert_array_equal(result.scores, separate_fold_scores(SVCHead(), X, y, result.configs, 3, [0]))


# --- the command: chosen on the train split alone ------------------------------------------------

def sweep(cache_path, out, *extra):
    result = invoke("fit-head", "--head", "linear", "--cache", cache_path, "--out", out, "--epochs", 3,
                    "--grid", "lr=0.001,0.03,0.3", "--grid", "momentum=0,0.9", "--cv", 3, "--seeds", 2,
                    "--no-progress", *extra)
    assert result.exit_code == 0, result.output
    return result


def test_relabelling_the_evaluation_images_changes_neither_the_choice_nor_a_fold_score(cache, tmp_path):
    path, (X, y, X_val, y_val) = cache
    relabelled = write_cache(tmp_path / "relabelled.h5", {"train": (X, y), "val": (X_val, 1 - y_val)}, ["ants", "bees"])
    first, second = sweep(path, tmp_path / "a"), sweep(relabelled, tmp_path / "b")
    rows = [list(csv.DictReader(open(tmp_path / run / "search.csv"))) for run in ("a", "b")]
    drop = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert [drop(r) for r in rows[0]] == [drop(r) for r in rows[1]] and len(rows[0]) == 6
    configs = [load_run(tmp_path / run).config.part.search for run in ("a", "b")]
    assert configs[0]["chosen"] == configs[1]["chosen"] and configs[0]["folds"] == {
        "k": 3, "seed": 0, "stratified": True, "shuffle": True}
    assert load_run(tmp_path / "a").metrics["final"] != load_run(tmp_path / "b").metrics["final"]  # evaluated apart
    # The terminal shows the top five; the run folder the chosen configuration, refitted for each seed.
    assert "top 5" in first.output and first.output.count("\n   ") >= 5 and "chosen: " in second.output
    run = load_run(tmp_path / "a")
    chosen = configs[0]["chosen"]
    assert {k: run.config.part.head_params[k] for k in chosen} == chosen and run.seeds == [0, 1]
    assert [r["rank"] for r in run.metrics["search"]] == [int(r["rank"]) for r in rows[0]]
    best = min(rows[0], key=lambda r: (int(r["rank"]), rows[0].index(r)))
    assert float(best["lr"]) == chosen["lr"] and float(best["momentum"]) == chosen["momentum"]


def test_report_shows_budgets_and_warns_when_they_differ(cache, tmp_path):
    path, _ = cache
    sweep(path, tmp_path / "swept")
    result = invoke("fit-head", "--head", "linear", "--cache", path, "--out", tmp_path / "plain", "--epochs", 3,
                    "--no-progress")
    assert result.exit_code == 0, result.output
    report = invoke("report", tmp_path / "swept", tmp_path / "plain", "-o", tmp_path / "report")
    assert report.exit_code == 0, report.output
    assert "swept grid of 6, 3-fold" in report.output and "plain untuned" in report.output
    warnings = [line for line in report.stderr.splitlines() if line.startswith("warning: the runs were tuned")]
    assert len(warnings) == 1
    doc = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [r["budget"] for r in doc["runs"]] == ["grid of 6, 3-fold", "untuned (fixed hyperparameters)"]


@pytest.mark.parametrize("args, fragments", [
    (("--grid", "nope=1,2"), ("no hyperparameter 'nope'",)),
    (("--grid", "lr=-0.1,0.1"), ("lr must be positive",)),
    (("--grid", "epochs=0,3"), ("epochs must be at least 1",)),
    (("--grid", "lr="), ("empty value",)),
    (("--grid", "lr=0.1,,0.2"), ("empty value",)),
    (("--grid", "depth=1,2"), ("the linear head has no hyperparameter 'depth'", "--head quantum")),
    (("--grid", "lr=0.1", "--grid", "lr=0.2"), ("given twice",)),
    (("--grid", "lr"), ("PARAM=V1,V2",)),
    (("--grid", "seed=1,2"), ("--seeds",)),
    (("--grid", "lr=0.1,0.2", "--cv", "41"), ("--cv 41 is larger than the rarest class",)),
    (("--grid", "lr=0.1,0.2", "--lr", "0.5"), ("--lr and --grid lr",)),
])
def test_bad_grids_are_one_line_errors_and_write_nothing(cache, tmp_path, args, fragments):
    path, _ = cache
    out = tmp_path / "run"
    result = invoke("fit-head", "--head", "linear", "--cache", path, "--out", out, "--no-progress", *args)
    assert_invoke_error(result, *fragments, ignore=("train on",))
    assert not out.exists()


def test_python_grid_errors(data):
    X, y = data
    with pytest.raises(HeadError, match="no hyperparameter 'depth'"):
        search(LinearHead(), X, y, {"depth": [1, 2]})
    with pytest.raises(HeadError, match="no values"):
        search(LinearHead(), X, y, {"lr": []})
    with pytest.raises(HeadError, match="at least 1"):
        search(LinearHead(), X, y, {"epochs": [0]})
    with pytest.raises(HeadError, match="rarest class"):
        search(LinearHead(), X[:8], np.array(["a"] * 6 + ["b"] * 2), {"lr": [0.1]}, cv=3)


def strip_seconds(block: dict) -> dict:
    return {k: v for k, v in block.items() if k != "training_seconds"}


# --- the svc and mlp baselines ----------------------------------------------------------------------

def test_svc_scores_rows_by_its_decision_function(data):
    X, y = data
    head = SVCHead(C=3.0).fit(X, y)
    decision = head.decision_function(X)
    order = np.argsort(decision)
    assert np.all(np.diff(head.predict_proba(X)[order, 1]) >= 0)  # ROC/AP rank rows by the decision value
    assert list(head.predict(X)) == list(np.where(decision > 0, head.classes_[1], head.classes_[0]))


@pytest.mark.parametrize("head, flags", [("svc", ("--C", "2")), ("mlp", ("--max-epochs", "15"))])
def test_svc_and_mlp_killed_write_nothing_and_the_rerun_equals_a_clean_run(head, flags, tmp_path):
    X, y = blobs(700, 2, seed=1, noise=6.0)  # a fit of about a second
    X_val, y_val = blobs(50, 2, seed=2, noise=6.0)
    path = write_cache(tmp_path / "feats.h5", {"train": (X, y), "val": (X_val, y_val)}, ["ants", "bees"])
    out, clean = tmp_path / "run", tmp_path / "clean"
    args = ("fit-head", "--head", head, "--cache", path, "--out", out, *flags, "--seeds", "2", "--no-progress")
    job = Running(*args)
    job.wait_until(lambda: job.said("evaluate on"), "training to start")
    job.proc.send_signal(signal.SIGKILL)
    job.proc.wait()
    assert not out.exists() or not any(out.iterdir())  # nothing written until finished
    rerun = Running(*args)
    rerun.proc.wait(timeout=240)
    assert rerun.proc.returncode == 0, "".join(rerun.err)
    result = invoke("fit-head", "--head", head, "--cache", path, "--out", clean, *flags, "--seeds", "2", "--no-progress")
    assert result.exit_code == 0, result.output
    a, b = load_run(out), load_run(clean)
    assert [strip_seconds(s) for s in a.metrics["seeds"]] == [strip_seconds(s) for s in b.metrics["seeds"]]
    np.testing.assert_array_equal(a.proba_seeds(), b.proba_seeds())
    assert np.allclose(load_head(out, seed=1).predict_proba(X_val), load_run(out).proba_seeds()[1], atol=1e-12)


# --- sweeps on augmented views: every fold trains as the final fit will -----------------------------

K_VIEWS = 3


@pytest.fixture(scope="module")
def views_data():
    """41 images (noisy blobs) and K noisy views of each, noisy enough to move the fold scores. 3 folds train on
    27, 27 and 28 images, so the short ones are padded in the shared pass, and image 0 (what padding used to
    repeat) is held out by a short one."""
    X, y = blobs(41, 2, seed=3, noise=2.5)
    V = X[:, None] + np.random.default_rng(4).normal(scale=2.5, size=(41, K_VIEWS, X.shape[1])).astype(np.float32)
    return X, np.array(["ants", "bees"])[y], V


def separate_fold_scores_on_views(head, X, y, V, configs, cv, seeds, fold_seed=0):
    """Each configuration x fold x seed fitted alone on the fold's views, as the final fit trains (views to a
    head whose fit takes them; else every view a row), scored on the held-out centre crops."""
    takes_views = isinstance(head, (LinearHead, BottleneckHead, LogRegHead))
    scores = np.zeros((len(configs), cv, len(seeds)))
    for k, (train, test) in enumerate(StratifiedKFold(cv, shuffle=True, random_state=fold_seed).split(X, y)):
        for c, params in enumerate(configs):
            for j, seed in enumerate(seeds):
                fitted = clone(head).set_params(**params, seed=seed)
                if takes_views:
                    fitted.fit(X[train], y[train], views=V[train])
                else:
                    fitted.fit(V[train].reshape(-1, V.shape[2]), np.repeat(y[train], V.shape[1]))
                scores[c, k, j] = fitted.score(X[test], y[test])
    return scores


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # logreg at max_iter 3, mlp
@pytest.mark.parametrize("head, grid, seeds", [
    (LinearHead(batch_size=4), {"lr": [0.003, 0.05], "epochs": [2, 3]}, [0, 5]),
    (LogRegHead(Cs=3, cv=3), {"max_iter": [3, 100]}, [0]),
    (SVCHead(), {"C": [0.1, 10.0]}, [0]),
    (MLPHead(hidden=16, max_epochs=20), {"alpha": [0.0001, 10.0]}, [0]),
    (BottleneckHead(epochs=2, batch_size=4, optimizer="adam"), {"lr": [0.01, 0.1], "n_qubits": [2, 3]}, [0]),
], ids=["linear", "logreg", "svc", "mlp", "bottleneck"])
def test_fold_scores_on_views_equal_separate_fits_on_the_folds_views(head, grid, seeds, views_data):
    X, y, V = views_data
    on_views = search(head, X, y, grid, cv=3, seeds=seeds, views=V, augment="tutorial")
    expected = separate_fold_scores_on_views(head, X, y, V, on_views.configs, 3, seeds)
    np.testing.assert_array_equal(on_views.scores, expected)
    centre = search(head, X, y, grid, cv=3, seeds=seeds)
    assert not np.array_equal(on_views.scores, centre.scores)  # the views change what the folds learn
    np.testing.assert_array_equal(centre.scores, separate_fold_scores(head, X, y, centre.configs, 3, seeds))
    per_epoch = not isinstance(head, (LogRegHead, SVCHead, MLPHead))
    how = "one seeded draw per image and epoch" if per_epoch else "every view a training row"
    assert on_views.record()["views"] == {"k": K_VIEWS, "augment": "tutorial", "how": how, "split_by": "image",
                                          "held_out_scored_on": "centre crops"}
    assert "views" not in centre.record() and f"folds trained on {K_VIEWS} tutorial view(s)" in on_views.table()


def _image_of_view(V):
    """Each view's features (as bytes) -> the image it belongs to; centre crops are not in it."""
    return {V[i, v].tobytes(): i for i in range(len(V)) for v in range(V.shape[1])}


def test_a_fold_never_trains_on_a_view_of_an_image_it_holds_out(views_data, monkeypatch):
    X, y, V = views_data
    image_of = _image_of_view(V)
    folds = list(StratifiedKFold(3, shuffle=True, random_state=0).split(X, y))

    def check(fold, rows_read, every_view=False):
        images = [image_of.get(np.asarray(row, dtype=np.float32).tobytes()) for row in rows_read]
        assert None not in images  # every training row is a view (no centre crop, nothing else)
        train, test = folds[fold]
        assert set(images) <= set(train.tolist()) and not set(images) & set(test.tolist())
        if every_view:  # rows: all K views of every training image, each once
            assert sorted(images) == sorted(np.repeat(train, V.shape[1]).tolist())

    # scikit-learn heads: the rows their fit gets, one fit per fold
    seen = []
    svc_fit = SVCHead.fit

    def svc_spy(self, X_, y_, **kw):
        seen.append(np.array(X_))
        return svc_fit(self, X_, y_, **kw)

    monkeypatch.setattr(SVCHead, "fit", svc_spy)
    search(SVCHead(), X, y, {"C": [1.0]}, cv=3, views=V)
    assert len(seen) == 3
    for fold, rows in enumerate(seen):
        check(fold, rows, every_view=True)
    # logreg gets the views themselves (its own inner folds group them by image)
    seen.clear()
    logreg_fit = LogRegHead.fit

    def logreg_spy(self, X_, y_, eval_set=None, views=None):
        seen.append(views)
        return logreg_fit(self, X_, y_, eval_set=eval_set, views=views)

    monkeypatch.setattr(LogRegHead, "fit", logreg_spy)
    search(LogRegHead(Cs=2, cv=2), X, y, {"max_iter": [50]}, cv=3, views=V)
    assert len(seen) == 3
    for fold, views in enumerate(seen):
        check(fold, views.reshape(-1, V.shape[2]), every_view=True)
    # torch heads: every feature row each slot (one per fold here) reads, padding included, every epoch
    read = {fold: [] for fold in range(3)}
    epoch = TrainingRows.epoch

    def spying(self, seeds, e, rows=None):
        take = epoch(self, seeds, e, rows)

        def spy(batch):
            out = take(batch)
            for slot, features in enumerate(out.view(len(seeds), -1, out.shape[-1]).numpy()):
                read[slot].extend(features)
            return out
        return spy

    monkeypatch.setattr(TrainingRows, "epoch", spying)
    search(LinearHead(batch_size=4, epochs=3), X, y, {"lr": [0.01]}, cv=3, views=V)
    for fold, rows in read.items():
        assert len(rows) >= 3 * len(folds[fold][0])
        check(fold, rows)


@pytest.fixture(scope="module")
def views_caches(cache, tmp_path_factory):
    """``cache``'s features with K noisy views of each training image (as ``embed --views K`` stores them), and
    the same with every evaluation label flipped."""
    _, (X, y, X_val, y_val) = cache
    V = X[:, None] + np.random.default_rng(5).normal(scale=2.5, size=(len(X), K_VIEWS, X.shape[1])).astype(np.float32)
    root = tmp_path_factory.mktemp("sweep_views")

    def with_views(name, val_labels):
        path = write_cache(root / name, {"train": (X, y), "val": (X_val, val_labels)}, ["ants", "bees"])
        with h5py.File(path, "r+") as f:
            f["train"].create_dataset("views", data=V, chunks=(8, K_VIEWS, X.shape[1]), fletcher32=True)
            f.attrs["views"] = ViewSpec(k=K_VIEWS, augment="tutorial").to_json()
        return path

    return with_views("views.h5", y_val), with_views("relabelled.h5", 1 - y_val)


def test_a_sweep_on_views_is_chosen_on_the_training_views_alone_and_views_off_is_the_sweep_of_before(
        cache, views_caches, tmp_path):
    plain, _ = cache
    views, relabelled = views_caches
    runs = {"views": sweep(views, tmp_path / "views"), "relabelled": sweep(relabelled, tmp_path / "relabelled"),
            "off": sweep(views, tmp_path / "off", "--views", "off"), "plain": sweep(plain, tmp_path / "plain")}
    drop = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    rows = {name: [drop(r) for r in csv.DictReader(open(tmp_path / name / "search.csv"))] for name in runs}
    records = {name: load_run(tmp_path / name).config.part.search for name in runs}
    # The evaluation labels move neither the choice nor a fold score, with views as without.
    assert rows["views"] == rows["relabelled"] and records["views"]["chosen"] == records["relabelled"]["chosen"]
    assert load_run(tmp_path / "views").metrics["final"] != load_run(tmp_path / "relabelled").metrics["final"]
    # The folds trained on the views, and the run folder says so; the refit did too.
    assert rows["views"] != rows["off"]
    assert records["views"]["views"] == {"k": K_VIEWS, "augment": "tutorial", "how": "one seeded draw per image and "
                                         "epoch", "split_by": "image", "held_out_scored_on": "centre crops"}
    assert load_run(tmp_path / "views").config.details["training_views"]["k"] == K_VIEWS
    assert "so do the search's folds" in runs["views"].output
    assert f"folds trained on {K_VIEWS} tutorial view(s) per image" in runs["views"].output
    # --views off: exactly the sweep of a cache without views.
    assert rows["off"] == rows["plain"] and records["off"] == records["plain"] and "views" not in records["off"]
    budgets = {name: load_run(tmp_path / name).config.part.budget() for name in ("views", "off")}
    assert budgets == {"views": f"grid of 6, 3-fold on {K_VIEWS} tutorial views", "off": "grid of 6, 3-fold"}
