"""What every head is: a scikit-learn classifier over feature arrays, built from its declaration.

A head class names its declaration in :mod:`tlkit.heads.registry`::

    class LinearHead(TorchHead, head="linear"):
        def _build_module(self, n_features, n_classes): ...

and gets from it an ``__init__`` that takes exactly the declared
hyperparameters, keyword-only, with their declared defaults, and stores them
verbatim (scikit-learn's rule: ``get_params``, ``clone`` and ``Pipeline``
read that signature). :meth:`Head.check_params` checks every declared
constraint before any data is read.

Every head has the same ``fit(X, y, eval_set=None)``. ``eval_set=(X, y)`` is
only scored, never used to choose anything; after ``fit`` a head holds

* ``classes_``, ``n_features_in_``, ``training_seconds_``,
* ``history_``: one dict per epoch (empty for heads without epochs),
* ``evaluation_``: an :class:`Evaluation` of ``eval_set`` (None without one).

Every head also has ``fit_seeds(X, y, seeds, eval_set=None)``: one fitted
copy per seed, each exactly what ``clone(head).set_params(seed=s).fit(X, y,
eval_set)`` gives. The default here does just that, seed after seed (right
for logreg, whose seed moves its cross-validation folds); the torch heads
override it with one vectorised pass over all seeds
(:meth:`tlkit.heads.base.TorchHead.fit_seeds`). Which way a head goes is the
head's own business: no caller looks at its name or type.

Every head also has ``cross_validate(X, y, configs, folds, seeds)``, which
:func:`tlkit.heads.search` (``fit-head --grid``) calls: the held-out
accuracy of each configuration x fold x seed. The default here fits them one
after another; the torch heads train them as slots of stacked passes.

Progress: a head that trains in epochs reports each one to the listener of
:func:`reporting_epochs`. Why a context and not a ``fit`` argument or a
hyperparameter: a listener changes no result, so it must not be in
``get_params`` (it would be cloned, compared and written to config.json),
and scikit-learn's meta-estimators (Pipeline, cross_val_score) call
``fit(X, y)`` with only the arguments they route. A context variable reaches
the training loop through any of them, is restored when the block ends, and
is never pickled with the estimator.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data

from tlkit.errors import HeadError
from tlkit.metrics import predict_from_proba


@dataclass
class Evaluation:
    """A fitted head on its evaluation set, at the final and at the best epoch (the same without epochs)."""

    final_proba: np.ndarray
    best_proba: np.ndarray
    final_epoch: int | None
    best_epoch: int | None
    final_loss: float | None
    best_loss: float | None


_EPOCH_LISTENER: ContextVar[Callable | None] = ContextVar("tlkit_epoch_listener", default=None)


@contextlib.contextmanager
def reporting_epochs(listener: Callable):
    """Within the block, a head fitting in epochs calls ``listener(record, epochs)`` after each epoch."""
    token = _EPOCH_LISTENER.set(listener)
    try:
        yield listener
    finally:
        _EPOCH_LISTENER.reset(token)


def epoch_listener(epochs: int) -> Callable | None:
    """The current listener as the training loop's ``on_epoch(record)``, or None."""
    listener = _EPOCH_LISTENER.get()
    return None if listener is None else (lambda record: listener(record, epochs))


@contextlib.contextmanager
def _reporting_fits_in_a_row(n_fits: int):
    """Within the block, ``n_fits`` fits run one after another: the listener hears of n_fits times the
    epochs of one, so a progress bar counts all of them."""
    listener = _EPOCH_LISTENER.get()
    if listener is None:
        yield
        return
    with reporting_epochs(lambda record, epochs: listener(record, epochs * n_fits)):
        yield


def _declared_init(params) -> Callable:
    """``__init__(self, *, <each declared hyperparameter>=<its default>)``, storing each one verbatim."""
    signature = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default) for p in params]
    )

    def __init__(self, **hyperparameters):
        try:
            bound = signature.bind(self, **hyperparameters)
        except TypeError as exc:  # a name the head does not declare, as for any Python function
            raise TypeError(f"{type(self).__name__}() {exc}") from None
        bound.apply_defaults()
        for name, value in list(bound.arguments.items())[1:]:
            setattr(self, name, value)

    __init__.__signature__ = signature
    return __init__


class Head(ClassifierMixin, BaseEstimator):
    """Base class of every head (see the module docstring)."""

    spec: ClassVar = None  # its HeadSpec in tlkit.heads.registry

    def __init_subclass__(cls, head: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if head is not None:
            from tlkit.heads.registry import get_spec

            cls.spec = get_spec(head)
            cls.__init__ = _declared_init(cls.spec.params)
            cls.__init__.__qualname__ = f"{cls.__qualname__}.__init__"

    def check_params(self) -> None:
        """Raise HeadError now for a hyperparameter that cannot work (before any data is read)."""
        for param in self.spec.params:
            problem = param.problem(getattr(self, param.name))
            if problem:
                raise HeadError(problem)

    def run_details(self) -> dict:
        """What config.json records about this fit beyond the hyperparameters (settings derived, values chosen)."""
        return {}

    def fit_seeds(self, X, y, seeds, eval_set=None, **fit_params) -> list:
        """One fitted copy of this head per seed (in the order given); this head itself is left unfitted.

        Each copy equals ``clone(self).set_params(seed=s).fit(X, y, eval_set=eval_set, **fit_params)``
        (``fit_params``: ``views=`` for a head whose fit takes them). Here that is what runs, one seed
        after another; heads that can do better override this method.
        """
        from sklearn.base import clone

        from tlkit.train.config import check_seeds

        seeds = check_seeds(seeds)
        self.check_params()
        heads = [clone(self).set_params(seed=seed) for seed in seeds]
        with _reporting_fits_in_a_row(len(heads)):
            return [head.fit(X, y, eval_set=eval_set, **fit_params) for head in heads]

    def evaluate_once(self, eval_set) -> Evaluation | None:
        """The evaluation of a head without epochs: its only fit is both the final and the best one."""
        if eval_set is None:
            return None
        from sklearn.metrics import log_loss

        X_eval, y_eval = self._eval_arrays(eval_set, np.float64)
        proba = self.predict_proba(X_eval)
        loss = float(log_loss(y_eval, proba, labels=np.arange(len(self.classes_)))) if len(y_eval) else None
        return Evaluation(final_proba=proba, best_proba=proba, final_epoch=None, best_epoch=None,
                          final_loss=loss, best_loss=loss)

    def cross_validate(self, X, y, configs: list[dict], folds: list, seeds: list[int], views=None):
        """Accuracy of each configuration (``set_params``) trained on each fold's training rows with each seed
        and scored on its held-out rows: (scores (configs, folds, seeds), seconds (configs,)). Here one fit
        after another; the torch heads train them in stacked passes (:mod:`tlkit.heads.sweep` calls this).
        ``views`` (n, K, features): each fold trains on the views of its training rows as ``fit`` would
        (:func:`tlkit.train.views.fold_fit_arguments`); the held-out rows are scored on X."""
        import time

        from sklearn.base import clone

        from tlkit.train.views import fold_fit_arguments

        X, y = np.asarray(X), np.asarray(y)
        scores = np.zeros((len(configs), len(folds), len(seeds)))
        seconds = np.zeros(len(configs))
        with _reporting_fits_in_a_row(scores.size):
            for c, params in enumerate(configs):
                t0 = time.perf_counter()
                for k, (train, test) in enumerate(folds):
                    for j, seed in enumerate(seeds):
                        head = clone(self).set_params(**params, seed=seed)
                        train_args, fit_params, _ = fold_fit_arguments(head, X, y, views, train)  # views: see above
                        head.fit(*train_args, **fit_params)
                        scores[c, k, j] = float((head.predict(X[test]) == y[test]).mean())
                seconds[c] = time.perf_counter() - t0
        return scores, seconds

    def predict(self, X) -> np.ndarray:
        """Class labels; with two classes the positive one is predicted at probability >= 0.5."""
        proba = self.predict_proba(X)  # first: it raises NotFittedError on an unfitted head
        return self.classes_[predict_from_proba(proba)]

    def _training_data(self, X, y, dtype):
        """Validated (X, index of each label in classes_); sets classes_ and n_features_in_."""
        X, y = validate_data(self, X, y, dtype=dtype)
        check_classification_targets(y)
        classes, y_index = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise HeadError(f"the training labels hold only one class ({classes[0]!r}); a classifier needs at least two")
        self.classes_ = classes
        return X, y_index.astype(np.int64)

    def _eval_arrays(self, eval_set, dtype):
        """(X_eval, index of each label in classes_); empty arrays without an evaluation set."""
        n_classes = len(self.classes_)
        if eval_set is None:
            return np.zeros((0, self.n_features_in_), dtype), np.zeros(0, np.int64)
        X_eval, y_eval = eval_set
        X_eval = validate_data(self, X_eval, dtype=dtype, reset=False)
        y_eval = np.asarray(y_eval)
        index = np.searchsorted(self.classes_, y_eval).clip(0, n_classes - 1)
        unknown = self.classes_[index] != y_eval
        if unknown.any():
            raise HeadError(f"the evaluation labels hold classes never seen in training: {sorted(set(y_eval[unknown].tolist()))}")
        return X_eval, index.astype(np.int64)
