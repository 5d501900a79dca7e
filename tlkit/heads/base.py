"""The scikit-learn face of the torch heads: fit / predict / predict_proba on feature arrays.

    >>> from tlkit.heads import LinearHead
    >>> head = LinearHead(epochs=30, seed=0).fit(X_train, y_train, eval_set=(X_val, y_val))
    >>> head.predict_proba(X_val)[:, 1]

Hyperparameters are stored verbatim by ``__init__`` (so ``get_params``,
``clone``, ``Pipeline`` and ``cross_val_score`` work); everything learned
ends with an underscore. Training is :func:`tlkit.train.train_classifier`
with the seed paper's defaults; the same ``seed`` gives the same numbers.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from tlkit.heads.errors import HeadError
from tlkit.heads.threads import one_thread
from tlkit.metrics import predict_from_proba
from tlkit.train import TrainConfig, train_classifier

PREDICT_CHUNK = 8192  # rows per forward pass at prediction time


class TorchHead(ClassifierMixin, BaseEstimator):
    """Base class: a torch module over 512-d features, trained by the shared loop.

    Subclasses define ``__init__`` (listing every hyperparameter, as
    scikit-learn requires) and ``_build_module(n_features, n_classes)``.
    """

    def _build_module(self, n_features: int, n_classes: int) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_params(self) -> None:
        """Raise HeadError now for a hyperparameter that cannot work (before any data is read)."""
        self.train_config()

    def train_config(self) -> TrainConfig:
        """The training hyperparameters as the shared loop's config (validated)."""
        cfg = TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, momentum=self.momentum,
            step_size=self.step_size, gamma=self.gamma, optimizer=self.optimizer,
            weight_decay=self.weight_decay, seed=self.seed,
        )
        if cfg.optimizer not in ("sgd", "adam"):
            raise HeadError(f"optimizer must be 'sgd' or 'adam', got {cfg.optimizer!r}")
        for name in ("epochs", "batch_size", "step_size"):
            if int(getattr(cfg, name)) < 1:
                raise HeadError(f"{name} must be at least 1, got {getattr(cfg, name)}")
        if not cfg.lr > 0:
            raise HeadError(f"lr must be positive, got {cfg.lr}")
        return cfg

    def fit(self, X, y, eval_set=None, on_epoch=None):
        """Train on (X, y). ``eval_set=(X_val, y_val)`` is evaluated after every epoch
        (history, best epoch); ``on_epoch(record)`` is called after each epoch."""
        self.check_params()
        cfg = self.train_config()
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        classes, y_index = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise HeadError(f"the training labels hold a single class ({classes[0]!r}); a classifier needs at least two")
        self.classes_ = classes
        X_eval, y_eval = self._eval_arrays(eval_set)

        with one_thread(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            module = self._build_module(X.shape[1], len(self.classes_))
            features, labels = torch.from_numpy(X), torch.from_numpy(y_index.astype(np.int64))
            result = train_classifier(
                module, _epoch_batches(features, labels, cfg), _evaluator(X_eval, y_eval, len(self.classes_)),
                y_eval, cfg, on_epoch=on_epoch,
            )
        module.eval()
        self.module_ = module
        self.history_ = [asdict(r) for r in result.history]
        self.best_epoch_ = result.best_epoch if len(y_eval) else None
        self.best_state_dict_ = result.best_state if len(y_eval) else None
        self.training_seconds_ = result.seconds
        self.eval_proba_ = {"final": result.final_proba, "best": result.best_proba} if len(y_eval) else None
        return self

    def _eval_arrays(self, eval_set):
        n_classes = len(self.classes_)
        if eval_set is None:
            return np.zeros((0, self.n_features_in_), np.float32), np.zeros(0, np.int64)
        X_eval, y_eval = eval_set
        X_eval = validate_data(self, X_eval, dtype=np.float32, reset=False)
        y_eval = np.asarray(y_eval)
        index = np.searchsorted(self.classes_, y_eval).clip(0, n_classes - 1)
        unknown = self.classes_[index] != y_eval
        if unknown.any():
            raise HeadError(f"the evaluation labels hold classes never seen in training: {sorted(set(y_eval[unknown].tolist()))}")
        return X_eval, index.astype(np.int64)

    def predict_proba(self, X) -> np.ndarray:
        """(n_samples, n_classes) class probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self, "module_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return predict_module_proba(self.module_, X)

    def predict(self, X) -> np.ndarray:
        """Class labels; with two classes the positive one is predicted at probability >= 0.5."""
        return self.classes_[predict_from_proba(self.predict_proba(X))]


def predict_module_proba(module: nn.Module, X: np.ndarray) -> np.ndarray:
    """Softmax of the module's logits, in chunks, without gradients."""
    module.eval()
    with torch.no_grad(), one_thread():
        chunks = [
            torch.softmax(module(torch.from_numpy(np.ascontiguousarray(X[i:i + PREDICT_CHUNK]))).double(), dim=1).numpy()
            for i in range(0, len(X), PREDICT_CHUNK)
        ]
    return np.concatenate(chunks)


def _epoch_batches(features: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig):
    """Shuffled mini-batches; the order of epoch e depends only on (seed, e)."""

    def batches(epoch: int):
        order = torch.from_numpy(np.random.default_rng([cfg.seed, epoch]).permutation(len(labels)))
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start:start + cfg.batch_size]
            yield features[rows], labels[rows]

    return batches


def _evaluator(X_eval: np.ndarray, y_eval: np.ndarray, n_classes: int):
    features, labels = torch.from_numpy(X_eval), torch.from_numpy(y_eval)

    def evaluate(module: nn.Module):
        if not len(labels):
            return float("nan"), np.zeros((0, n_classes))
        with torch.no_grad():
            logits = module(features)
            loss = nn.functional.cross_entropy(logits, labels).item()
            return loss, torch.softmax(logits.double(), dim=1).numpy()

    return evaluate
