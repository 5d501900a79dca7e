"""Which cached rows a head trains on and which it is evaluated on.

* train + val in the cache: train on ``train``, evaluate on ``val``;
* no val (only ``all``, or ``train`` without ``val``): a seeded, stratified
  hold-out of ``val_fraction`` of those rows is the evaluation set, and the
  run records how it was drawn so it can be drawn again.

The ``test`` split is never touched here: it is for a final, once-only check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlkit.cache.reader import FeatureCache, SplitArrays
from tlkit.errors import HeadError


@dataclass
class SplitPlan:
    train: SplitArrays
    eval: SplitArrays
    eval_split: str  # "val" or "holdout"
    source: str  # the cache split the evaluation rows come from
    val_fraction: float | None  # hold-out only
    split_seed: int | None  # hold-out only

    def describe(self) -> str:
        if self.eval_split == "val":
            return f"train on 'train' ({len(self.train)}), evaluate on 'val' ({len(self.eval)})"
        return (f"no 'val' split: {self.val_fraction:g} of '{self.source}' held out for evaluation "
                f"(stratified, seed {self.split_seed}): train {len(self.train)}, evaluate {len(self.eval)}")


def plan_splits(cache: FeatureCache, val_fraction: float = 0.2, split_seed: int = 0) -> SplitPlan:
    """Choose the training and evaluation rows of ``cache`` (see the module docstring)."""
    if "train" in cache and "val" in cache:
        plan = SplitPlan(cache["train"], cache["val"], "val", "val", None, None)
    else:
        source = "train" if "train" in cache else "all" if "all" in cache else None
        if source is None:
            raise HeadError(f"{cache.path} has no 'train' or 'all' split to train on (it has: {', '.join(cache.splits) or 'none'})")
        plan = holdout(cache[source], source, val_fraction, split_seed, cache.path)
    check_trainable(plan, cache)
    return plan


def holdout(rows: SplitArrays, source: str, val_fraction: float, seed: int, where) -> SplitPlan:
    """Split ``rows`` into train and evaluation parts, stratified by label."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 1.0:
        raise HeadError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(rows) == 0:
        raise HeadError(f"split {source!r} of {where} is empty: nothing to train on")
    try:
        train_idx, eval_idx = train_test_split(
            np.arange(len(rows)), test_size=val_fraction, stratify=rows.labels, random_state=seed,
        )
    except ValueError as exc:
        raise HeadError(f"cannot hold out {val_fraction:g} of the {len(rows)} rows of {source!r} in {where} "
                        f"with every class on both sides: {exc}") from None
    return SplitPlan(_take(rows, np.sort(train_idx)), _take(rows, np.sort(eval_idx)), "holdout", source, float(val_fraction), int(seed))


def check_trainable(plan: SplitPlan, cache: FeatureCache) -> None:
    train_name = "'train'" if plan.eval_split == "val" else f"'{plan.source}' (after the hold-out)"
    eval_name = "'val'" if plan.eval_split == "val" else "hold-out"
    if len(plan.train) == 0:
        raise HeadError(f"the {train_name} split of {cache.path} is empty: nothing to train on")
    if len(plan.eval) == 0:
        raise HeadError(f"the {eval_name} split of {cache.path} is empty: nothing to evaluate on")
    present = np.unique(plan.train.labels)
    if len(present) < 2:
        only = cache.class_names[present[0]] if len(present) else "?"
        raise HeadError(f"the {train_name} split of {cache.path} holds a single class ({only!r}); a classifier needs at least two")
    missing = [name for i, name in enumerate(cache.class_names) if i not in set(present.tolist())]
    if missing:
        raise HeadError(f"class(es) {', '.join(map(repr, missing))} have no images in the {train_name} split of {cache.path}; "
                        "every class needs training examples")


def _take(rows: SplitArrays, index: np.ndarray) -> SplitArrays:
    return SplitArrays(features=rows.features[index], labels=rows.labels[index], paths=rows.paths[index],
                       views=None if rows.views is None else rows.views[index])
