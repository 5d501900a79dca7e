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
"""

from __future__ import annotations

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

    def epoch(self, seeds: Sequence[int], epoch: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """``take(rows)``: rows (S, b) image indices, slot s trained with ``seeds[s]`` -> (S*b, D) features."""
        if not self.k:
            return lambda rows: self.table.index_select(0, rows.flatten())
        drawn = np.stack([draw_views(seed, epoch, self.n, self.k) for seed in seeds])  # (S, n)
        source = torch.from_numpy(np.arange(self.n) * self.k + drawn).to(self.table.device)  # row of image i in table
        return lambda rows: self.table.index_select(0, source.gather(1, rows).flatten())
