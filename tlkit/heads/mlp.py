"""The MLP baseline: ``Pipeline(StandardScaler, MLPClassifier)``, one ReLU hidden layer.

Bowles et al.'s other classical baseline. Its width (``hidden``), L2
penalty (``alpha``), optimizer (``solver``) and learning rate are
hyperparameters (``--grid hidden=10,100,1000``); ``seed`` seeds its
initialisation (and Adam's batch order). The default solver is L-BFGS
with at most 30 iterations, scikit-learn's advice for training sets of a
few thousand rows or fewer: on hymenoptera's 245 and on digits it scores
as Adam's 200 epochs do, or better, at a fraction of their cost
(docs/heads.md, "What make demo costs"); ``solver="adam"`` trains by
minibatches, Bowles et al.'s optimizer, for up to 200 epochs.
"""

from __future__ import annotations

import numpy as np
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import LabelBinarizer

from tlkit.heads.pipeline import PipelineHead
from tlkit.heads.registry import MLP_MAX_EPOCHS


class MLPHead(PipelineHead, head="mlp"):
    def _classifier(self):
        return MLPClassifier(hidden_layer_sizes=(int(self.hidden),), alpha=float(self.alpha), solver=self.solver,
                             learning_rate_init=float(self.lr), max_iter=self._max_epochs(),
                             random_state=int(self.seed))

    def _max_epochs(self) -> int:
        return int(MLP_MAX_EPOCHS[self.solver] if self.max_epochs is None else self.max_epochs)

    def _proba(self, pipeline, X) -> np.ndarray:
        return pipeline.predict_proba(X)

    def run_details(self) -> dict:
        model = self.pipeline_.named_steps["model"]
        return {"mlp": {"n_iter": int(model.n_iter_), "max_iter": int(model.max_iter)}}

    def _model_arrays(self, model) -> dict:
        layers = {f"coef{i}": c for i, c in enumerate(model.coefs_)}
        layers.update({f"intercept{i}": b for i, b in enumerate(model.intercepts_)})
        return {**layers, "classes": model.classes_, "out_activation": np.asarray(model.out_activation_)}

    def _restore_model(self, arrays: dict):
        model = self._classifier()
        n_weights = sum(1 for k in arrays if k.startswith("coef"))
        model.coefs_ = [arrays[f"coef{i}"] for i in range(n_weights)]
        model.intercepts_ = [arrays[f"intercept{i}"] for i in range(n_weights)]
        model.n_layers_, model.n_outputs_ = n_weights + 1, model.coefs_[-1].shape[1]
        model.out_activation_ = str(arrays["out_activation"])
        model.classes_ = arrays["classes"]
        model._label_binarizer = LabelBinarizer().fit(model.classes_)
        model.n_features_in_ = model.coefs_[0].shape[0]
        return model
