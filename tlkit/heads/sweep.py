"""A hyperparameter sweep chosen on training data only: grid x stratified folds x seeds, in one vectorised pass.

    >>> from tlkit.heads import LinearHead, search
    >>> result = search(LinearHead(), X_train, y_train, {"lr": [0.001, 0.01, 0.1]}, cv=5, seeds=range(5))
    >>> result.best_params_, result.cv_results_["mean_test_score"]

The protocol is scikit-learn's ``GridSearchCV(head, grid, cv=StratifiedKFold(K,
shuffle=True, random_state=fold_seed))``, and for one seed its fold scores are
the same numbers (the tests hold them to 1e-6):

* the configurations are ``ParameterGrid(grid)``'s, in its order (keys
  sorted, the last one varying fastest);
* each is trained on K-1 folds and scored on the held-out fold by accuracy
  at its final epoch; with several seeds, a fold's score is the mean over
  the seeds (each seed trains every fold, the folds themselves fixed by
  ``fold_seed``);
* a configuration's score is the mean of its fold scores (std: their
  spread); rank 1 is the best, ties share a rank, and the choice is the
  earliest configuration of the best rank.

How the fits run is the head's business (:meth:`Head.cross_validate`): the
torch heads stack every configuration x fold x seed that shares a module
structure as slots of one pass (:mod:`tlkit.train.slots`), one pass per
structure; scikit-learn heads fit one after another.

With augmented views (``views=`` (n, K, D), ``fit-head --views auto`` on a
cache made with ``embed --views K``) every fold trains the way the final fit
will: a torch head's fold draws one view per training image per epoch (by
its seed, as a fit on the fold's images would), logreg, svc and mlp train
on every view of the fold's training images as rows
(:func:`tlkit.train.views.fold_fit_arguments`). The folds split *images*
(a held-out image's views are never a training row of its fold), and the
held-out images are scored on their centre crops, as evaluation is. The
choice is then made for the training set the refit really sees.

Nothing here sees an evaluation set: it gets the training rows only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tlkit.errors import HeadError
from tlkit.train.config import check_seeds

SCORE = "mean fold accuracy at the final epoch"


@dataclass
class SearchResult:
    """What a sweep found, shaped like ``GridSearchCV``'s attributes (``cv_results_``, ``best_params_``...)."""

    head: str
    grid: dict
    configs: list[dict]
    scores: np.ndarray  # (configs, folds, seeds) accuracy on each held-out fold
    seconds: np.ndarray  # (configs,) training seconds (each its share of a shared pass)
    cv: int
    fold_seed: int
    seeds: list[int]
    views: dict | None = None  # {"k", "augment", "how"} when the folds trained on augmented views
    cv_results_: dict = field(init=False)
    best_index_: int = field(init=False)

    def __post_init__(self):
        from scipy.stats import rankdata

        folds = self.scores.mean(axis=2)  # (configs, folds): seeds averaged within each fold
        means = folds.mean(axis=1)
        results = {"params": self.configs}
        for name in self.grid:
            results[f"param_{name}"] = [c[name] for c in self.configs]
        for k in range(self.cv):
            results[f"split{k}_test_score"] = folds[:, k]
        results["mean_test_score"] = means
        results["std_test_score"] = folds.std(axis=1)
        results["rank_test_score"] = rankdata(-means, method="min").astype(np.int32)
        results["mean_fit_time"] = self.seconds / (self.cv * len(self.seeds))
        self.cv_results_ = results
        self.best_index_ = int(np.flatnonzero(results["rank_test_score"] == 1)[0])

    @property
    def best_params_(self) -> dict:
        return dict(self.configs[self.best_index_])

    @property
    def best_score_(self) -> float:
        return float(self.cv_results_["mean_test_score"][self.best_index_])

    def rows(self) -> list[dict]:
        """One row per configuration (search.csv, metrics.json's ``search``), in grid order."""
        r = self.cv_results_
        return [{**{name: config[name] for name in self.grid},
                 **{f"fold{k}": float(r[f"split{k}_test_score"][i]) for k in range(self.cv)},
                 "mean": float(r["mean_test_score"][i]), "std": float(r["std_test_score"][i]),
                 "rank": int(r["rank_test_score"][i]), "seconds": float(self.seconds[i])}
                for i, config in enumerate(self.configs)]

    def record(self) -> dict:
        """What config.json records about the sweep: the grid, the folds, the seeds and the choice."""
        record = {"grid": self.grid, "n_configs": len(self.configs), "score": SCORE,
                  "folds": {"k": self.cv, "seed": self.fold_seed, "stratified": True, "shuffle": True},
                  "seeds": list(self.seeds), "chosen": self.best_params_, "chosen_score": self.best_score_}
        if self.views:  # without views the record is what it always was: the folds trained on centre crops
            record["views"] = {**self.views, "split_by": "image", "held_out_scored_on": "centre crops"}
        return record

    def table(self, top: int = 5) -> str:
        """The best ``top`` configurations, aligned, for the terminal."""
        rows = sorted(self.rows(), key=lambda row: row["rank"])[:top]
        names = list(self.grid)
        cells = [[str(row[n]) for n in names] for row in rows]
        widths = [max(len(n), *(len(c[i]) for c in cells)) for i, n in enumerate(names)]
        on_views = (f", folds trained on {self.views['k']} {self.views['augment'] or 'augmented'} view(s) "
                    "per image" if self.views else "")
        lines = [f"search: grid of {len(self.configs)}, {self.cv}-fold (folds seed {self.fold_seed}), "
                 f"{len(self.seeds)} seed(s){on_views}; score = {SCORE}; top {len(rows)}:",
                 "rank  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, widths)) + "    mean     std  seconds"]
        for row, cell in zip(rows, cells):
            lines.append(f"{row['rank']:>4}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cell, widths))
                         + f"  {row['mean']:.4f}  {row['std']:.4f}  {row['seconds']:7.2f}")
        lines.append(f"chosen: {', '.join(f'{k}={v}' for k, v in self.best_params_.items())} "
                     "(ties go to the earlier configuration)")
        return "\n".join(lines)


def check_grid(spec, grid: dict) -> dict:
    """The grid with every name declared by the head and every value valid (one-line HeadError otherwise)."""
    from tlkit.heads.grid import gridable

    names = gridable(spec)
    if not grid:
        raise HeadError("an empty grid: give at least one hyperparameter and its values")
    out = {}
    for name, values in grid.items():
        if name not in {p.name for p in spec.params} or name == "seed":
            raise HeadError(f"grid: the {spec.name} head has no hyperparameter {name!r} to search; it has: {', '.join(names)}")
        values = list(values) if isinstance(values, (list, tuple, np.ndarray, range)) else [values]
        if not values:
            raise HeadError(f"grid: {name} has no values")
        for value in values:
            problem = spec.param(name).problem(value)
            if problem:
                raise HeadError(f"grid: {problem}")
        out[name] = values
    return out


def make_folds(y, cv: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, shuffled, seeded folds of the training rows (HeadError if a class is rarer than ``cv``)."""
    from sklearn.model_selection import StratifiedKFold

    cv = int(cv)
    if cv < 2:
        raise HeadError(f"--cv {cv}: cross-validation needs at least 2 folds")
    classes, counts = np.unique(np.asarray(y), return_counts=True)
    if counts.min() < cv:
        raise HeadError(f"--cv {cv} is larger than the rarest class ({classes[counts.argmin()]!r} has "
                        f"{counts.min()} training example(s)); use --cv {max(2, int(counts.min()))} or fewer")
    return list(StratifiedKFold(cv, shuffle=True, random_state=int(seed)).split(np.zeros(len(y)), y))


def search(head, X, y, grid: dict, cv: int = 5, seeds=None, fold_seed: int | None = None, *,
           views=None, augment: str | None = None) -> SearchResult:
    """Cross-validate every configuration of ``grid`` for ``head`` (an unfitted estimator) on (X, y).

    ``seeds``: train each configuration and fold with each of these seeds (default: the head's own seed);
    ``fold_seed``: the folds' seed (default: the first seed). ``views`` (n, K, features): augmented views
    of the rows of X; each fold then trains on the views of its training images as the final
    ``fit(X, y, views=views)`` would, and is scored on its held-out rows of X (``augment``: their name,
    recorded). Returns a :class:`SearchResult`; nothing is refitted (``head.set_params(**result.best_params_)``
    is the chosen head).
    """
    from sklearn.model_selection import ParameterGrid

    from tlkit.train.views import check_views, how_trained

    grid = check_grid(head.spec, grid)
    head.check_params()
    seeds = check_seeds([head.seed] if seeds is None else seeds)
    fold_seed = seeds[0] if fold_seed is None else int(fold_seed)
    configs = list(ParameterGrid(grid))
    folds = make_folds(np.asarray(y), cv, fold_seed)  # over images: a view goes where its image goes
    if views is None:
        scores, seconds = head.cross_validate(X, y, configs, folds, seeds)
        used = None
    else:
        views = check_views(np.atleast_2d(np.asarray(X)), views)
        scores, seconds = head.cross_validate(X, y, configs, folds, seeds, views=views)
        used = {"k": int(views.shape[1]), "augment": augment, "how": how_trained(head)}
    return SearchResult(head.spec.name, grid, configs, scores, seconds, int(cv), fold_seed, seeds, used)
