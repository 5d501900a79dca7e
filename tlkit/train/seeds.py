"""Many seeds of a torch head trained together, as one set of stacked parameters.

A head on cached features is tiny (a 512 x 2 matrix; a 4-qubit circuit), so
one training step is mostly fixed per-step cost: Python, dispatch, the
optimizer's bookkeeping. Training S seeds as S separate runs pays that cost
S times; stacking the seeds' parameters along a leading axis and running one
step for all of them pays it about once (PyTorch's "model ensembling"
recipe; DINOv2 trains its linear probes the same way).

    >>> heads = LinearHead(epochs=30).fit_seeds(X, y, seeds=range(10), eval_set=(X_val, y_val))
    >>> [h.evaluation_.final_proba for h in heads]     # one (n_val, n_classes) array per seed

:meth:`tlkit.heads.base.TorchHead.fit_seeds` is the entry point; the engine
underneath is :func:`train_seeds`, which takes any module builder.

**Each seed is exactly the single run with that seed.** Its module is built
after ``torch.manual_seed(seed)`` (inside ``torch.random.fork_rng``), and
epoch e visits the training rows in ``np.random.default_rng([seed, e])
.permutation(n)`` order in batches of ``batch_size``, as
:class:`tlkit.heads.base.TorchHead` does. The loss minimised is the sum over
seeds of each seed's mean batch loss, so each seed's gradient is its own;
SGD (momentum, weight decay), Adam and StepLR act element by element, so one
optimizer over the stacked tensors gives every seed its own update. The
tests check the result against separate ``fit`` runs.

Two ways to run the stacked forward pass (``method``):

* ``"batched"``: the module's own ``forward`` on inputs (S, B, features),
  with each ``nn.Linear`` replaced by a batched matrix product
  (:class:`SeedLinear`) and every other parameter given its seed axis.
  Fewest operations per step; valid for modules whose forward broadcasts
  over a leading seed axis once the parameters carry one.
* ``"vmap"``: ``torch.func.stack_module_state`` + ``functional_call`` under
  ``torch.vmap``, for any other torch module; more overhead per step.

Which one a module takes, the module says itself, by its attribute
``seed_axis``: ``"broadcast"`` (batched), ``"vmap"``, or ``None`` (it cannot
train several seeds in one pass at all, e.g. a circuit run by a PennyLane
QNode on a device: :class:`NotVectorisable`, and the head trains its seeds
one after another). A module that does not say is inferred: ``nn.Linear``
and element-wise activations in ``nn.Sequential`` broadcast; anything else
takes vmap. ``"auto"`` follows that; no table here names a head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from tlkit.train.config import TrainConfig, check_seeds
from tlkit.train.loop import EpochRecord
from tlkit.train.slots import SeedRun, SeedsResult, Slot, train_slots  # noqa: F401  (re-exported)
from tlkit.train.stacking import NotVectorisable, SeedLinear, seed_axis, stack  # noqa: F401  (re-exported)

METHODS = ("auto", "batched", "vmap")


def train_seeds(
    build_module: Callable[[int, int], nn.Module],
    X: np.ndarray,
    y: np.ndarray,
    seeds: Sequence[int],
    cfg: TrainConfig,
    *,
    n_classes: int | None = None,
    eval_set: tuple[np.ndarray, np.ndarray] | None = None,
    device: torch.device | str = "cpu",
    method: str = "auto",
    on_epoch: Callable[[int, list[EpochRecord]], None] | None = None,
    views: np.ndarray | None = None,
) -> SeedsResult:
    """Train one module per seed, all in one vectorised pass; ``cfg.seed`` is ignored.

    ``build_module(n_features, n_classes)`` builds one seed's module (a head's
    ``_build_module``); ``X`` (n, features) float32 and ``y`` (n,) class
    indices 0..n_classes-1; ``eval_set=(X_val, y_val)`` likewise, evaluated
    after every epoch. ``on_epoch(epoch, records)`` gets the 1-based epoch
    and each seed's :class:`EpochRecord`. The global torch RNG is left as it
    was. The loop is :func:`tlkit.train.slots.train_slots`, one slot per seed.
    ``views`` (n, K, features): each seed trains on its own seeded draw of one
    view per row and epoch (:mod:`tlkit.train.views`), as its single run would.
    """
    seeds = check_seeds(seeds)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return train_slots([Slot(seed, cfg, build_module) for seed in seeds], X, y, n_classes=n_classes,
                       eval_set=eval_set, device=device, method=method, on_epoch=on_epoch, views=views)
