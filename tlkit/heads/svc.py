"""The RBF support-vector baseline: ``Pipeline(StandardScaler, SVC(kernel="rbf"))`` (Bowles et al.'s SVC).

Scored by its decision function, not by Platt-scaled probabilities (an inner
5-fold fit, slow and not monotone in the decision): ``predict_proba`` is the
logistic function of the decision value (two classes) or the softmax of the
one-vs-rest decision values, so ROC AUC and average precision rank rows by
the decision function itself, and the predicted class is the SVC's sign /
argmax. C and gamma are its hyperparameters (``--grid C=0.1,1,10``).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, softmax
from sklearn.svm import SVC
from sklearn.utils.validation import check_is_fitted, validate_data

from tlkit.heads.pipeline import PipelineHead

# What libsvm's predict reads from a fitted SVC (scikit-learn's BaseSVC), saved as plain arrays.
_FITTED = ("support_", "support_vectors_", "_n_support", "dual_coef_", "_dual_coef_", "intercept_", "_intercept_",
           "_probA", "_probB", "fit_status_", "shape_fit_", "class_weight_", "classes_", "_gamma", "n_features_in_",
           "_sparse")


class SVCHead(PipelineHead, head="svc"):
    """StandardScaler + RBF SVC; ``decision_function`` gives the raw decision values."""

    # libsvm draws nothing without Platt scaling (SVC's random_state only seeds probability=True, unused
    # here): every seed fits the same model, so --seeds and a sweep fit it once (Head.seed_changes_fit).
    seed_changes_fit = False

    def _classifier(self):
        return SVC(kernel="rbf", C=float(self.C), gamma="scale" if self.gamma is None else float(self.gamma),
                   random_state=int(self.seed))

    def decision_function(self, X) -> np.ndarray:
        """(n_samples,) for two classes (positive: ``classes_[1]``), else (n_samples, n_classes) one-vs-rest."""
        check_is_fitted(self, "pipeline_")
        return self.pipeline_.decision_function(validate_data(self, X, dtype=np.float64, reset=False))

    def _proba(self, pipeline, X) -> np.ndarray:
        decision = pipeline.decision_function(X)
        if decision.ndim == 1:
            positive = expit(decision)
            return np.column_stack([1.0 - positive, positive])
        return softmax(decision, axis=1)

    def run_details(self) -> dict:
        model = self.pipeline_.named_steps["model"]
        return {"svc": {"n_support": np.asarray(model.n_support_).tolist(), "gamma": float(model._gamma)}}

    def _model_arrays(self, model) -> dict:
        return {name: getattr(model, name) for name in _FITTED}

    def _restore_model(self, arrays: dict):
        model = self._classifier()
        for name in _FITTED:
            value = arrays[name]
            setattr(model, name, value.item() if value.ndim == 0 else value)
        model._sparse = bool(model._sparse)
        model.shape_fit_ = tuple(int(v) for v in model.shape_fit_)
        return model
