"""The linear-probe head: scikit-learn logistic regression on standardized features.

C is chosen by stratified k-fold cross-validation on the training data only
(``LogisticRegressionCV``, L-BFGS, log-loss), over a wide logarithmic grid as
in linear-probe practice (DINOv2 / ssl-transfer sweep 1e-6..1e5), then the
model is refit on all training data at that C.
"""

from __future__ import annotations

import inspect
import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from tlkit.heads.errors import HeadError
from tlkit.heads.threads import one_thread
from tlkit.metrics import predict_from_proba

DEFAULT_CS = tuple(np.logspace(-6, 5, 45).tolist())


class LogRegHead(ClassifierMixin, BaseEstimator):
    """StandardScaler + LogisticRegression with C cross-validated on the training data.

    Parameters
    ----------
    Cs : sequence of float or int, default 45 values from 1e-6 to 1e5
        Inverse regularisation strengths to try (an int n: n values on sklearn's default grid).
    cv : int, default 5
        Folds (fewer when the rarest class has fewer training examples).
    max_iter : int, default 1000
        L-BFGS iterations per fit.
    seed : int, default 0
        Shuffles the folds.
    """

    def __init__(self, *, Cs=DEFAULT_CS, cv=5, max_iter=1000, seed=0):
        self.Cs = Cs
        self.cv = cv
        self.max_iter = max_iter
        self.seed = seed

    def check_params(self) -> None:
        """Raise HeadError now for a hyperparameter that cannot work (before any data is read)."""
        if int(self.cv) < 2:
            raise HeadError(f"cv must be at least 2 folds, got {self.cv}")
        if int(self.max_iter) < 1:
            raise HeadError(f"max_iter must be at least 1, got {self.max_iter}")

    def fit(self, X, y):
        t0 = time.perf_counter()
        self.check_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        classes, counts = np.unique(y, return_counts=True)
        if len(classes) < 2:
            raise HeadError(f"the training labels hold a single class ({classes[0]!r}); a classifier needs at least two")
        folds = min(int(self.cv), int(counts.min()))
        if folds < 2:
            rare = classes[counts.argmin()]
            raise HeadError(f"class {rare!r} has {counts.min()} training example(s); choosing C by cross-validation needs at least 2 per class")
        self.classes_ = classes
        self.scaler_ = StandardScaler().fit(X)
        with one_thread():
            search = LogisticRegressionCV(
                Cs=list(self.Cs) if np.ndim(self.Cs) else int(self.Cs),
                cv=StratifiedKFold(folds, shuffle=True, random_state=self.seed),
                scoring="neg_log_loss", solver="lbfgs", max_iter=int(self.max_iter), **_quiet_options(),
            ).fit(self.scaler_.transform(X), y)
        self.C_ = float(np.ravel(search.C_)[0])
        self.cv_folds_ = folds
        self.model_ = fitted_logistic_regression(self.C_, search.coef_, search.intercept_, search.classes_)
        self.training_seconds_ = time.perf_counter() - t0
        return self

    def predict_proba(self, X) -> np.ndarray:
        """(n_samples, n_classes) class probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        with one_thread():
            return self.model_.predict_proba(self.scaler_.transform(X))

    def predict(self, X) -> np.ndarray:
        """Class labels; with two classes the positive one is predicted at probability >= 0.5."""
        return self.classes_[predict_from_proba(self.predict_proba(X))]


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
