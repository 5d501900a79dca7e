"""The scikit-learn baselines (svc, mlp): a StandardScaler and a classifier, as one head without epochs.

Each subclass names its classifier (``_classifier``), how it scores rows
(``_proba``) and which fitted arrays rebuild it (``_model_arrays`` /
``_restore_model``), so its run folder holds plain arrays (model.npz,
loaded without pickle) like logreg's. ``history_`` is empty and the final
and best evaluation are the same, as for logreg.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from tlkit.heads.estimator import Head
from tlkit.threads import one_thread


class PipelineHead(Head):
    """StandardScaler + a scikit-learn classifier, trained on the label indices 0..n_classes-1."""

    def _classifier(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _proba(self, pipeline, X) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def fit(self, X, y, eval_set=None):
        t0 = time.perf_counter()
        self.check_params()
        X, y_index = self._training_data(X, y, np.float64)
        with one_thread(), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # n_iter_ is recorded (run_details)
            self.pipeline_ = Pipeline([("scale", StandardScaler()), ("model", self._classifier())]).fit(X, y_index)
        self.training_seconds_ = time.perf_counter() - t0
        self.history_ = []
        self.evaluation_ = self.evaluate_once(eval_set)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """(n_samples, n_classes) class scores summing to one, columns in the order of ``classes_``."""
        check_is_fitted(self, "pipeline_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        with one_thread():
            return self._proba(self.pipeline_, X)

    def to_arrays(self) -> dict:
        scaler = self.pipeline_.named_steps["scale"]
        return dict(mean=scaler.mean_, scale=scaler.scale_, var=scaler.var_, classes=np.asarray(self.classes_),
                    **{f"model_{k}": np.asarray(v) for k, v in self._model_arrays(self.pipeline_.named_steps["model"]).items()})

    def from_arrays(self, arrays: dict):
        scaler = StandardScaler()
        scaler.mean_, scaler.scale_, scaler.var_ = arrays["mean"], arrays["scale"], arrays["var"]
        scaler.n_features_in_, scaler.n_samples_seen_ = len(arrays["mean"]), 0
        model = self._restore_model({k[len("model_"):]: v for k, v in arrays.items() if k.startswith("model_")})
        self.pipeline_ = Pipeline([("scale", scaler), ("model", model)])
        self.classes_ = arrays["classes"]
        self.n_features_in_ = len(arrays["mean"])
        return self

    def _model_arrays(self, model) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _restore_model(self, arrays: dict):  # pragma: no cover - abstract
        raise NotImplementedError
