"""Training on cached augmented views (``tlkit embed --views K``): which view of each image a head sees.

A cache made with ``--views K`` holds, beside each training image's centre crop, the features of K
augmented crops of it (``/<split>/views``, (N, K, D)). Heads use them in one of two ways:

* **torch heads** (trained in epochs) see one view per image per epoch, as a training loop with
  on-the-fly augmentation would: :func:`draw_views` picks it, and :class:`TrainingRows` hands the
  loop the rows of that epoch;
* **heads without epochs** (logreg, and any head whose ``fit`` takes no ``views``) train on every view
  as a row of its own: :func:`view_rows`.

Evaluation always uses the centre crop.

The draw is seeded: image i's view in epoch e of the run with seed s is element i of
``np.random.default_rng([s, e, VIEW_STREAM]).integers(K, size=n)``. It depends on nothing else: not
on the other seeds trained in the same vectorised pass (``--seeds``: each seed slot draws by its own
seed, so a vectorised run equals separate per-seed runs), not on the batch, not on the device.
``VIEW_STREAM`` keeps the draw apart from the epoch's row order, ``default_rng([s, e])``.

A sweep (``fit-head --grid``) cross-validates on views when the final fit will use them: a fold's
slot is a fit with its seed on the fold's training images, so it draws by the same rule over those
images (n: their number, i: an image's place among them), and scikit-learn heads get every view of
the fold's training images as rows (:func:`fold_fit_arguments`). The held-out images are scored on
their centre crops, and the folds split images, never views.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import numpy as np
import torch

from tlkit.errors import HeadError

VIEW_STREAM = 0x76696577  # "view"


def draw_views(seed: int, epoch: int, n: int, k: int) -> np.ndarray:
    """(n,) int64: the view of each of ``n`` images that the run with ``seed`` trains on in ``epoch`` (0-based)."""
    return np.random.default_rng([int(seed), int(epoch), VIEW_STREAM]).integers(k, size=n, dtype=np.int64)


def check_views(X: np.ndarray, views) -> np.ndarray | None:
    """``views`` as float32 (n, K, n_features) matching the rows and features of ``X``; None stays None."""
    if views is None:
        return None
    views = np.ascontiguousarray(views, dtype=np.float32)
    if views.ndim != 3 or views.shape[0] != X.shape[0] or views.shape[2] != X.shape[1] or views.shape[1] < 1:
        raise HeadError(f"views must be (n_samples, K, n_features) = ({X.shape[0]}, K, {X.shape[1]}), got {views.shape}")
    return views


def view_rows(views: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every view as a row: (n*K, D) features, their labels, and the image each row comes from (for grouped CV)."""
    n, k = views.shape[:2]
    return views.reshape(n * k, -1), np.repeat(np.asarray(y), k), np.repeat(np.arange(n), k)


class TrainingRows:
    """The training features a torch loop reads: the centre crops, or one drawn view per image and epoch.

    ``features`` (n, D) and ``views`` (n, K, D) or None, as tensors on the training device.
    :meth:`epoch` gives the function that turns a batch of image indices, one row per seed slot,
    into their features for that epoch.
    """

    def __init__(self, features: torch.Tensor, views: torch.Tensor | None = None):
        self.n = len(features)
        self.k = 0 if views is None else views.shape[1]
        # Views flattened to (n*K, D), so a batch is one index_select whatever view each image draws.
        self.table = features if views is None else views.reshape(self.n * self.k, -1)

    def epoch(self, seeds: Sequence[int], epoch: int,
              rows: Sequence[np.ndarray | None] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """``take(batch)``: batch (S, b) image indices, slot s trained with ``seeds[s]`` -> (S*b, D) features.

        ``rows``: each slot's training images (None: all n). A slot draws as a fit with its seed on exactly
        those images would: the p-th of its m images gets element p of ``draw_views(seed, epoch, m, K)``.
        So a cross-validation fold trains on the views a separate fit on the fold's images sees.
        """
        if not self.k:
            return lambda batch: self.table.index_select(0, batch.flatten())
        rows = [None] * len(seeds) if rows is None else rows
        drawn: dict[tuple[int, int], np.ndarray] = {}  # folds of one size share a seed's draw
        source = np.empty((len(seeds), self.n), dtype=np.int64)  # slot s: the table row of image i
        for s, (seed, images) in enumerate(zip(seeds, rows)):
            images = np.arange(self.n) if images is None else np.asarray(images, dtype=np.int64)
            key = (int(seed), len(images))
            if key not in drawn:
                drawn[key] = draw_views(seed, epoch, len(images), self.k)
            source[s] = np.arange(self.n) * self.k  # images outside the slot's rows: never read
            source[s, images] = images * self.k + drawn[key]
        source_t = torch.from_numpy(source).to(self.table.device)
        return lambda batch: self.table.index_select(0, source_t.gather(1, batch).flatten())


def fold_fit_arguments(estimator, X: np.ndarray, y: np.ndarray, views: np.ndarray | None,
                       rows: np.ndarray | None = None) -> tuple[tuple, dict, str | None]:
    """What ``estimator.fit`` trains on, given images ``X`` (n, D), labels ``y`` and their ``views``
    (n, K, D) or None: ``((X, y), fit_kwargs, how)`` for the images ``rows`` (None: all of them).

    The one rule for a final fit (:func:`tlkit.heads.fit.training_data`) and a cross-validation fold
    (:meth:`tlkit.heads.estimator.Head.cross_validate`): a head whose ``fit`` takes ``views`` gets them
    (the torch heads: one seeded draw per image and epoch; logreg: every view a row, its own folds
    grouped by image); any other head gets every view of those images as a row of its own. ``how`` is
    None without views. Only the views of ``rows`` are handed on: a fold never trains on a view of
    an image it holds out.
    """
    X, y = np.asarray(X), np.asarray(y)
    if rows is not None:
        X, y = X[rows], y[rows]
        views = None if views is None else np.asarray(views)[rows]
    if views is None:
        return (X, y), {}, None
    if "views" in inspect.signature(estimator.fit).parameters:
        return (X, y), {"views": views}, how_trained(estimator)
    X_rows, y_rows, _ = view_rows(views, y)
    return (X_rows, y_rows), {}, how_trained(estimator)


def how_trained(estimator) -> str:
    """How ``estimator`` trains on views, in words (config.json's ``training_views`` and ``search``)."""
    per_epoch = hasattr(estimator, "train_config") and "views" in inspect.signature(estimator.fit).parameters
    return "one seeded draw per image and epoch" if per_epoch else "every view a training row"
