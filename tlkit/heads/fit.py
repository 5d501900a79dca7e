"""The ``fit-head`` job: cache in, run folder out.

Reads the cache (never an image, never the backbone), chooses the
train/evaluation rows, fits the head, evaluates it at the final and at the
best epoch, and writes the run folder of :mod:`tlkit.runs`. Nothing is
written until training has finished. Every head is handled the same way:
what differs between heads is in their declarations and classes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlkit.errors import HeadError
from tlkit.heads.estimator import reporting_epochs
from tlkit.heads.registry import get_spec, save_head
from tlkit.heads.splits import SplitPlan, plan_splits
from tlkit.runs import (
    HeadPart, RunConfig, RunWriter, build_metrics, eval_fingerprint, now, package_versions, seeds_history,
)
from tlkit.train.config import check_seeds

DEFAULT_CACHE = "cache/feats.h5"


@dataclass
class FitResult:
    run_dir: Path
    head: str
    estimator: object
    config: RunConfig
    metrics: dict
    plan: SplitPlan
    search: object = None  # the SearchResult of a sweep (--grid)


def fit_head(
    head: str,
    cache_path: str | Path = DEFAULT_CACHE,
    out: str | Path | None = None,
    *,
    params: dict | None = None,
    seeds: list[int] | None = None,
    grid: dict | None = None,
    cv: int = 5,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    progress: bool | None = None,
    echo: Callable[[str], None] = lambda msg: None,
    views: str = "auto",
) -> FitResult:
    """Train head ``head`` (a name in :data:`tlkit.heads.registry.HEADS`) with hyperparameters ``params``.

    ``seeds``: train one copy per seed (``fit_seeds``) and write a run of many seeds (:mod:`tlkit.runs`);
    ``FitResult.estimator`` is then the list of fitted heads. ``grid`` ({name: [values]}): first choose the
    configuration by ``cv``-fold cross-validation on the training rows only (:mod:`tlkit.heads.sweep`), then
    fit it as above; the run folder also holds search.csv. ``views``: ``auto`` trains on the cache's
    augmented views when it has them, ``on`` requires them, ``off`` ignores them (see :func:`training_data`);
    a ``grid`` search's folds then train on the views the same way (each fold on the views of its own
    training images only) and are scored on their held-out centre crops.
    """
    from tlkit.cache import load_cache

    if views not in VIEWS_CHOICES:
        raise HeadError(f"views must be one of {', '.join(VIEWS_CHOICES)}, got {views!r}")
    spec = get_spec(head)
    estimator = spec.build(params)
    estimator.check_params()  # bad flags (an unknown device...) fail before anything is read
    seeds = None if seeds is None else check_seeds(seeds)
    if grid:
        from tlkit.heads.sweep import check_grid, search

        grid = check_grid(spec, grid)
    run = RunWriter.plan(out, head)  # so does a finished --out: refused before any time is spent training
    cache = load_cache(cache_path, views=views != "off")
    plan = plan_splits(cache, val_fraction=val_fraction, split_seed=split_seed)
    train, fit_params, views_used = training_data(estimator, plan, cache, views)
    echo(plan.describe())
    if views_used:
        echo(f"training on views: {views_used['k']} {views_used['augment']} view(s) per image, {views_used['how']}; "
             + ("so do the search's folds; " if grid else "") + "evaluated on the centre crops")

    found = None
    if grid:  # chosen on the training rows alone: the evaluation split is not read until the choice is made
        with EpochBar(f"{head} search", progress) as bar, reporting_epochs(bar):
            found = search(estimator, plan.train.features, plan.train.labels, grid, cv=cv,
                           seeds=seeds or [estimator.seed],
                           views=plan.train.views if views_used else None,
                           augment=views_used["augment"] if views_used else None)
        estimator = spec.build({**(params or {}), **found.best_params_})
        echo(f"search done: chosen {found.best_params_} (mean fold accuracy {found.best_score_:.4f})")

    y_eval = plan.eval.labels
    with EpochBar(head, progress) as bar, reporting_epochs(bar):
        eval_set = (plan.eval.features, y_eval)
        fitted = [estimator.fit(*train, eval_set=eval_set, **fit_params)] if seeds is None else estimator.fit_seeds(
            *train, seeds, eval_set=eval_set, **fit_params)
    evaluations = [h.evaluation_ for h in fitted]
    one_seed = len(fitted) == 1

    def per_seed(key):  # one value per seed; a single run's as it always was
        values = [getattr(e, key) for e in evaluations]
        return values[0] if one_seed else values

    run.create()
    weights = save_head(fitted, run)
    config = run_config(head, fitted, cache, plan, weights, views_used)
    if found is not None:
        config.part.search = found.record()
        run.write_search(found.rows())
    run.write_config(config)
    run.write_history(seeds_history([h.history_ for h in fitted], [h.seed for h in fitted]))
    run.write_predictions(plan.eval.paths, y_eval, per_seed("final_proba"), per_seed("best_proba"),
                          seeds=[h.seed for h in fitted])
    metrics = build_metrics(
        y_eval, np.asarray(per_seed("final_proba")), np.asarray(per_seed("best_proba")),
        final_epoch=per_seed("final_epoch"), best_epoch=per_seed("best_epoch"),
        training_seconds=fitted[0].training_seconds_ if one_seed else [h.training_seconds_ for h in fitted],
        class_names=cache.class_names, final_loss=per_seed("final_loss"), best_loss=per_seed("best_loss"),
        seeds=[h.seed for h in fitted],
        histories=[h.history_ for h in fitted], train_labels=plan.train.labels,  # for the health checks
    )
    if found is not None:
        metrics["search"] = found.rows()
    if config.details.get("conditions"):  # a quantum head's noise, shots and gradient method, beside its numbers
        metrics["conditions"] = config.details["conditions"]
    run.finish(metrics)
    return FitResult(run.path, head, fitted[0] if seeds is None else fitted, config, metrics, plan, found)


VIEWS_CHOICES = ("auto", "on", "off")


def training_data(estimator, plan: SplitPlan, cache, views: str) -> tuple[tuple, dict, dict | None]:
    """(X, y), the extra fit arguments, and what config.json records about the views used (None: none).

    A head whose ``fit`` takes ``views`` (the torch heads: one seeded draw per image and epoch; logreg:
    every view a row, folds grouped by image) gets them as they are; any other head gets every view as a
    training row of its own (:func:`tlkit.train.views.fold_fit_arguments`, the rule a sweep's folds follow too).
    """
    from tlkit.train.views import fold_fit_arguments

    train_views = plan.train.views
    if views == "on" and train_views is None:
        raise HeadError(f"--views on, but {cache.path} holds no augmented views of its training images; "
                        "embed with --views K --augment NAME, or use --views auto/off")
    if views == "off" or train_views is None:
        return (plan.train.features, plan.train.labels), {}, None
    record = cache.provenance.as_dict()["views"]
    train, fit_params, how = fold_fit_arguments(estimator, plan.train.features, plan.train.labels, train_views)
    return train, fit_params, {"k": int(record["k"]), "augment": record["augment"], "params": record["params"],
                               "how": how}


def run_config(head: str, fitted: list, cache, plan: SplitPlan, weights: list[str], views_used: dict | None = None) -> RunConfig:
    estimator = fitted[0]  # a run of many seeds: the first seed's, as model.pt
    return RunConfig(
        kind="head",
        class_names=list(cache.class_names),
        eval_split=plan.eval_split,
        eval_fingerprint=eval_fingerprint(plan.eval.paths, plan.eval.labels, cache.class_names),
        n_train=len(plan.train),
        n_eval=len(plan.eval),
        part=HeadPart(
            head=head,
            head_params=estimator.get_params(),
            n_features=int(estimator.n_features_in_),
            classes=np.asarray(estimator.classes_).tolist(),
            cache=str(Path(cache.path).resolve()),
            cache_provenance=cache.provenance,
            split_source=plan.source,
            val_fraction=plan.val_fraction,
            split_seed=plan.split_seed,
            weights=weights,
            seeds=[int(h.seed) for h in fitted],
        ),
        versions=package_versions("numpy", "torch", "scikit-learn", "pennylane"),
        created=now(),
        details=_details(fitted) | ({"training_views": views_used} if views_used else {}),
    )


def _details(fitted: list) -> dict:
    """The first seed's run details; with many seeds, each seed's too where they differ (logreg's C)."""
    details = [h.run_details() for h in fitted]
    if any(d != details[0] for d in details[1:]):
        return {**details[0], "per_seed": [{"seed": int(h.seed), **d} for h, d in zip(fitted, details)]}
    return details[0]


def summary_table(metrics: dict) -> str:
    """The final and best rows of metrics.json, aligned, for the terminal; with many seeds, mean ± interval."""

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    summary = metrics.get("summary") or {}
    n_seeds = len(metrics.get("seeds", [])) or 1
    names = ("accuracy", "roc_auc", "average_precision")

    def cell(block, key, name):
        value = fmt(block[name], ".4f")
        interval = summary.get(name) or {}
        if key == "final" and n_seeds > 1 and interval.get("ci_high") is not None:
            value += f" ± {(interval['ci_high'] - interval['ci_low']) / 2:.4f}"
        return value

    widths = (18, 18, 18) if n_seeds > 1 else (10, 9, 8)  # one seed: the table as it always was
    rows = [f"{'':<12}{'epoch':>6}" + "".join(f"{t:>{w}}" for t, w in zip(("accuracy", "ROC AUC", "AP"), widths))]
    for label, key in (("final", "final"), ("best (opt.)", "best")):
        m = metrics[key]
        rows.append(f"{label:<12}{fmt(m['epoch'], 'd'):>6}"
                    + "".join(f"{cell(m, key, n):>{w}}" for n, w in zip(names, widths)))
    if n_seeds > 1:
        rows.append(f"mean of {n_seeds} seeds; ± is the half-width of the 95% Student-t interval across seeds; "
                    "'best' is each seed's own best epoch")
    images = (summary.get("images") or {}).get("accuracy") or {}
    if images.get("ci_low") is not None:
        rows.append(f"final accuracy, 95% interval over the evaluation images: {images['ci_low']:.4f} to "
                    f"{images['ci_high']:.4f} (bootstrap, {images['n_resamples']} resamples"
                    + (", seeds averaged within each)" if n_seeds > 1 else ")"))
    seconds = "training seconds" + (f" (all {n_seeds} seeds)" if n_seeds > 1 else "")
    rows.append(f"{seconds}: {metrics['training_seconds']:.2f}   evaluated on {metrics['n_eval']} rows; "
                "'best' picks the epoch on the evaluation set itself (optimistic): quote 'final'")
    return "\n".join(rows)


class EpochBar:
    """A tqdm bar over epochs, fed by the heads that train in epochs (see reporting_epochs)."""

    def __init__(self, head: str, progress: bool | None):
        self.head = head
        self.enabled = sys.stderr.isatty() if progress is None else progress
        self.bar = None

    def __call__(self, record, epochs: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=epochs, desc=f"fit-head {self.head}", unit="epoch", disable=not self.enabled,
                            file=sys.stderr, dynamic_ncols=True)
        self.bar.set_postfix(loss=f"{record.train_loss:.4f}", val_acc=f"{record.val_acc:.4f}", refresh=False)
        self.bar.update(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
