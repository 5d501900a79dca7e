"""The linear-probe head: scikit-learn logistic regression on standardized features.

C is chosen by stratified k-fold cross-validation on the training data only
(``LogisticRegressionCV``, L-BFGS, log-loss), over a wide logarithmic grid as
in linear-probe practice (DINOv2 / ssl-transfer sweep 1e-6..1e5), then the
model is refit on all training data at that C. Its hyperparameters (Cs, cv,
max_iter, seed) are declared in :mod:`tlkit.heads.registry`.

With augmented views (``fit(..., views=...)``, a cache made with ``embed --views K``) every view is a
training row of its own; the folds keep all views of one image together (``StratifiedGroupKFold``),
so C is never chosen on views of images the fold trained on.
"""

from __future__ import annotations

import inspect
import time

import numpy as np
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from tlkit.errors import HeadError
from tlkit.heads.estimator import Head
from tlkit.threads import one_thread


class LogRegHead(Head, head="logreg"):
    """StandardScaler + LogisticRegression with C cross-validated on the training data.

    It has no epochs: ``history_`` is empty, and the final and the best
    evaluation are the same. ``eval_set`` is only scored, never used to choose C.
    """

    def fit(self, X, y, eval_set=None, views=None):
        """Fit on (X, y); ``views`` (n_samples, K, n_features): train on every view as a row instead of X."""
        from tlkit.train.views import check_views, view_rows

        t0 = time.perf_counter()
        self.check_params()
        groups = None
        if views is not None:
            X, _ = self._training_data(X, y, np.float64)  # checks X and y as without views
            X, y, groups = view_rows(check_views(X, views), y)
        X, y_index = self._training_data(X, y, np.float64)
        counts = np.bincount(y_index if groups is None else y_index[::np.shape(views)[1]])  # images, not rows
        folds = min(int(self.cv), int(counts.min()))
        if folds < 2:
            rare = self.classes_[counts.argmin()]
            raise HeadError(f"class {rare!r} has {counts.min()} training example(s); choosing C by cross-validation needs at least 2 per class")
        self.scaler_ = StandardScaler().fit(X)
        splitter = (StratifiedKFold(folds, shuffle=True, random_state=self.seed) if groups is None else
                    list(StratifiedGroupKFold(folds, shuffle=True, random_state=self.seed).split(X, y_index, groups)))
        with one_thread():
            search = LogisticRegressionCV(
                Cs=list(self.Cs) if np.ndim(self.Cs) else int(self.Cs),
                cv=splitter,
                scoring="neg_log_loss", solver="lbfgs", max_iter=int(self.max_iter), **_quiet_options(),
            ).fit(self.scaler_.transform(X), self.classes_[y_index])
        self.C_ = float(np.ravel(search.C_)[0])
        self.cv_folds_ = folds
        self.n_iter_ = int(np.max(search.n_iter_))  # L-BFGS iterations of the longest fit (at most max_iter)
        self.model_ = fitted_logistic_regression(self.C_, search.coef_, search.intercept_, search.classes_)
        self.training_seconds_ = time.perf_counter() - t0
        self.history_ = []
        self.evaluation_ = self.evaluate_once(eval_set)
        return self

    def run_details(self) -> dict:
        return {"logreg": {"C": self.C_, "cv_folds": self.cv_folds_, "scoring": "neg_log_loss"}}

    def predict_proba(self, X) -> np.ndarray:
        """(n_samples, n_classes) class probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        with one_thread():
            return self.model_.predict_proba(self.scaler_.transform(X))

    def to_arrays(self) -> dict:
        """The fitted state as plain arrays (saved as model.npz)."""
        return dict(mean=self.scaler_.mean_, scale=self.scaler_.scale_, var=self.scaler_.var_,
                    coef=self.model_.coef_, intercept=self.model_.intercept_, classes=np.asarray(self.classes_),
                    C=np.float64(self.C_))

    def from_arrays(self, arrays: dict):
        """This head fitted with the state :meth:`to_arrays` gave."""
        scaler = StandardScaler()
        scaler.mean_, scaler.scale_, scaler.var_ = arrays["mean"], arrays["scale"], arrays["var"]
        scaler.n_features_in_, scaler.n_samples_seen_ = len(arrays["mean"]), 0
        self.scaler_ = scaler
        self.C_ = float(arrays["C"])
        self.model_ = fitted_logistic_regression(self.C_, arrays["coef"], arrays["intercept"], arrays["classes"])
        self.classes_ = arrays["classes"]
        self.n_features_in_ = len(arrays["mean"])
        return self


def fitted_logistic_regression(C: float, coef, intercept, classes) -> LogisticRegression:
    """A LogisticRegression holding the given coefficients (the CV refit's, or ones read from disk)."""
    model = LogisticRegression(C=C, max_iter=1)
    model.coef_ = np.asarray(coef, dtype=np.float64)
    model.intercept_ = np.asarray(intercept, dtype=np.float64)
    model.classes_ = np.asarray(classes)
    model.n_features_in_ = model.coef_.shape[1]
    return model


def _quiet_options() -> dict:
    """Opt in to scikit-learn's upcoming defaults where this version has the switches (no FutureWarnings)."""
    params = inspect.signature(LogisticRegressionCV.__init__).parameters
    options = {}
    if "use_legacy_attributes" in params:
        options["use_legacy_attributes"] = False
    if "l1_ratios" in params and "penalty" in params and params["penalty"].default == "deprecated":
        options["l1_ratios"] = (0.0,)
    return options
