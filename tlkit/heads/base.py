"""The torch heads: a module over 512-d features, trained by the shared loop.

    >>> from tlkit.heads import LinearHead
    >>> head = LinearHead(epochs=30, seed=0).fit(X_train, y_train, eval_set=(X_val, y_val))
    >>> head.predict_proba(X_val)[:, 1]

The training hyperparameters are :class:`tlkit.train.TrainConfig`'s, with
its defaults (the seed paper's); the same ``seed`` gives the same numbers.
Everything learned ends with an underscore.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from tlkit.heads.estimator import Evaluation, Head, epoch_listener
from tlkit.heads.threads import one_thread
from tlkit.train import TrainConfig
from tlkit.train.loop import train_classifier

PREDICT_CHUNK = 8192  # rows per forward pass at prediction time


class TorchHead(Head):
    """Base class: subclasses declare their head (``head="name"``) and define ``_build_module``."""

    def _build_module(self, n_features: int, n_classes: int) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def train_config(self) -> TrainConfig:
        """The training hyperparameters as the shared loop's config."""
        return TrainConfig(**{name: getattr(self, name) for name in TrainConfig.names()})

    def run_details(self) -> dict:
        return {"train": self.train_config().to_dict()}

    def fit(self, X, y, eval_set=None):
        """Train on (X, y). ``eval_set=(X_val, y_val)`` is evaluated after every epoch (history, best epoch)."""
        self.check_params()
        cfg = self.train_config()
        X, y_index = self._training_data(X, y, np.float32)
        X_eval, y_eval = self._eval_arrays(eval_set, np.float32)

        with one_thread(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            module = self._build_module(X.shape[1], len(self.classes_))
            features, labels = torch.from_numpy(X), torch.from_numpy(y_index)
            result = train_classifier(
                module, _epoch_batches(features, labels, cfg), _evaluator(X_eval, y_eval, len(self.classes_)),
                y_eval, cfg, on_epoch=epoch_listener(cfg.epochs),
            )
        module.eval()
        evaluated = len(y_eval) > 0
        self.module_ = module
        self.history_ = [asdict(r) for r in result.history]
        self.best_state_dict_ = result.best_state if evaluated else None
        self.training_seconds_ = result.seconds
        self.evaluation_ = Evaluation(
            final_proba=result.final_proba, best_proba=result.best_proba,
            final_epoch=len(self.history_), best_epoch=result.best_epoch,
            final_loss=self.history_[-1]["val_loss"], best_loss=self.history_[result.best_epoch - 1]["val_loss"],
        ) if evaluated else None
        return self

    def predict_proba(self, X) -> np.ndarray:
        """(n_samples, n_classes) class probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self, "module_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return predict_module_proba(self.module_, X)

    def restore_module(self, state: dict, classes: np.ndarray, n_features: int):
        """This head fitted with the saved ``state`` (a state_dict), as :mod:`tlkit.heads.store` loads it."""
        with torch.random.fork_rng(devices=[]):
            module = self._build_module(n_features, len(classes))
        module.load_state_dict(state)
        module.eval()
        self.module_ = module
        self.classes_ = classes
        self.n_features_in_ = n_features
        return self


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
