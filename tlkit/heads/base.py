"""The torch heads: a module over 512-d features, trained by the shared loop.

    >>> from tlkit.heads import LinearHead
    >>> head = LinearHead(epochs=30, seed=0).fit(X_train, y_train, eval_set=(X_val, y_val))
    >>> head.predict_proba(X_val)[:, 1]

The training hyperparameters are :class:`tlkit.train.TrainConfig`'s, with
its defaults (the seed paper's); the same ``seed`` gives the same numbers.
Everything learned ends with an underscore.
"""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from tlkit.heads.estimator import Evaluation, Head, epoch_listener
from tlkit.threads import one_thread
from tlkit.train import TrainConfig
from tlkit.train.slots import PER_SLOT

PREDICT_CHUNK = 8192  # rows per forward pass at prediction time


class TorchHead(Head):
    """Base class: subclasses declare their head (``head="name"``) and define ``_build_module``."""

    # Hyperparameters that leave the module's structure alone: a sweep trains their values as slots of one
    # pass. A head adds its own (the quantum head's q_delta, an initial scale).
    slot_params: tuple[str, ...] = PER_SLOT

    def _build_module(self, n_features: int, n_classes: int) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def train_config(self) -> TrainConfig:
        """The training hyperparameters as the shared loop's config."""
        return TrainConfig(**{name: getattr(self, name) for name in TrainConfig.names()})

    def run_details(self) -> dict:
        return {"train": self.train_config().to_dict()}

    def fit(self, X, y, eval_set=None, views=None):
        """Train on (X, y). ``eval_set=(X_val, y_val)`` is evaluated after every epoch (history, best epoch).

        ``views`` (n_samples, K, n_features): augmented views of each row (``tlkit embed --views K``); each
        epoch then trains on one seeded draw of them per row instead of X (:mod:`tlkit.train.views`).
        """
        from tlkit.train.views import check_views

        self.check_params()
        cfg = self.train_config()
        X, y_index = self._training_data(X, y, np.float32)
        views = check_views(X, views)
        X_eval, y_eval = self._eval_arrays(eval_set, np.float32)

        from tlkit.train.slots import Slot, train_slots

        listener = epoch_listener(cfg.epochs)
        result = train_slots(  # the one-slot case of the shared loop
            [Slot(cfg.seed, cfg, self._build_module)], X, y_index, n_classes=len(self.classes_),
            eval_set=(X_eval, y_eval) if len(y_eval) else None,
            on_epoch=None if listener is None else (lambda epoch, records: listener(records[0])), views=views,
        )
        run = result.runs[0]
        return self._fitted(run.module, run.history, run.seconds, run.best_state, run.best_epoch,
                            run.final_proba, run.best_proba, evaluated=len(y_eval) > 0)

    def fit_seeds(self, X, y, seeds, eval_set=None, views=None) -> list:
        """One fitted copy per seed, all seeds trained together as one set of stacked parameters.

        Each copy equals ``clone(self).set_params(seed=s).fit(X, y, eval_set=eval_set)`` (within float
        rounding: the tests hold it to 1e-4 in probabilities, and the same accuracy), in about the time of
        one fit (:mod:`tlkit.train.seeds`). Its ``training_seconds_`` is its share of the shared pass. A
        module that cannot take a seed axis (``seed_axis`` None: a quantum head on a PennyLane QNode)
        trains its seeds one after another instead, as :meth:`Head.fit_seeds` does.
        """
        from sklearn.base import clone

        from tlkit.train.config import check_seeds
        from tlkit.train.seeds import NotVectorisable, train_seeds
        from tlkit.train.views import check_views

        seeds = check_seeds(seeds)
        self.check_params()
        template = clone(self)  # validates the data and encodes the labels once, as fit would
        X_train, y_index = template._training_data(X, y, np.float32)
        views = check_views(X_train, views)
        X_eval, y_eval = template._eval_arrays(eval_set, np.float32)
        cfg = template.train_config()
        listener = epoch_listener(cfg.epochs)
        try:
            result = train_seeds(
                template._build_module, X_train, y_index, seeds, cfg, n_classes=len(template.classes_),
                eval_set=(X_eval, y_eval) if len(y_eval) else None,
                on_epoch=None if listener is None else (lambda epoch, records: listener(_mean_record(records))),
                views=views,
            )
        except NotVectorisable:
            return super().fit_seeds(X, y, seeds, eval_set=eval_set, views=views)
        heads = []
        for run in result.runs:
            head = clone(self).set_params(seed=run.seed)
            head.classes_, head.n_features_in_ = template.classes_, template.n_features_in_
            heads.append(head._fitted(run.module, run.history, run.seconds, run.best_state, run.best_epoch,
                                      run.final_proba, run.best_proba, evaluated=len(y_eval) > 0))
        return heads

    def cross_validate(self, X, y, configs: list[dict], folds: list, seeds: list[int], views=None):
        """:meth:`Head.cross_validate` in stacked passes: every configuration x fold x seed that builds the same
        module structure is one slot of one pass (its own lr, momentum, weight decay, epochs... and rows);
        configurations differing in anything else (depth, width, batch size...) go in separate passes.

        ``views`` (n, K, features): each slot trains on one view per training image and epoch, drawn by its
        seed as a fit on its fold's images would draw (:class:`tlkit.train.views.TrainingRows`); it only
        ever reads its own fold's images, and is scored on the centre crops (X) of the held-out ones."""
        from sklearn.base import clone

        from tlkit.train.seeds import NotVectorisable
        from tlkit.train.slots import Slot, train_slots
        from tlkit.train.views import check_views

        template = clone(self)
        X, y_index = template._training_data(X, y, np.float32)
        views = check_views(X, views)
        scores = np.zeros((len(configs), len(folds), len(seeds)))
        seconds = np.zeros(len(configs))
        groups: dict[tuple, list[int]] = {}
        for c, params in enumerate(configs):
            structure = tuple((k, repr(v)) for k, v in sorted(params.items()) if k not in self.slot_params)
            groups.setdefault(structure, []).append(c)
        heads = [clone(self).set_params(**params) for params in configs]
        for head in heads:
            head.check_params()
        listener = epoch_listener(sum(max(heads[c].epochs for c in group) for group in groups.values()))
        for group in groups.values():
            slots, where = [], []
            for c in group:
                cfg = heads[c].train_config()
                for k, (train, test) in enumerate(folds):
                    for j, seed in enumerate(seeds):
                        slots.append(Slot(seed, replace(cfg, seed=seed), heads[c]._build_module, train, test))
                        where.append((c, k, j))
            try:
                result = train_slots(slots, X, y_index, n_classes=len(template.classes_), eval_set=(X, y_index),
                                     keep_best=False, views=views,
                                     on_epoch=None if listener is None else (lambda e, r: listener(_mean_record(r))))
            except NotVectorisable:  # a QNode: one fit after another
                some, time_ = super(TorchHead, self).cross_validate(X, y_index, [configs[c] for c in group], folds,
                                                                    seeds, views=views)
                scores[group], seconds[group] = some, time_
                continue
            for (c, k, j), run in zip(where, result.runs):
                scores[c, k, j] = run.history[-1].val_acc
                seconds[c] += run.seconds
        return scores, seconds

    def _fitted(self, module, history, seconds, best_state, best_epoch, final_proba, best_proba, *, evaluated):
        """Set what a fit learns (one place for fit and fit_seeds); returns self."""
        self.module_ = module
        self.history_ = [asdict(r) for r in history]
        self.best_state_dict_ = best_state if evaluated else None
        self.training_seconds_ = seconds
        self.evaluation_ = Evaluation(
            final_proba=final_proba, best_proba=best_proba,
            final_epoch=len(self.history_), best_epoch=best_epoch,
            final_loss=self.history_[-1]["val_loss"], best_loss=self.history_[best_epoch - 1]["val_loss"],
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


def _mean_record(records):
    """One epoch of many seeds as one record (the across-seed mean), for a progress bar."""
    from dataclasses import replace

    mean = lambda key: float(np.mean([getattr(r, key) for r in records]))  # noqa: E731
    return replace(records[0], train_loss=mean("train_loss"), train_acc=mean("train_acc"),
                   val_loss=mean("val_loss"), val_acc=mean("val_acc"))


def predict_module_proba(module: nn.Module, X: np.ndarray) -> np.ndarray:
    """Softmax of the module's logits, in chunks, without gradients."""
    module.eval()
    with torch.no_grad(), one_thread():
        chunks = [
            torch.softmax(module(torch.from_numpy(np.ascontiguousarray(X[i:i + PREDICT_CHUNK]))).double(), dim=1).numpy()
            for i in range(0, len(X), PREDICT_CHUNK)
        ]
    return np.concatenate(chunks)
