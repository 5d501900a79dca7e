"""The ``fit-head`` job: cache in, run folder out.

Reads the cache (never an image, never the backbone), chooses the
train/evaluation rows, fits the head, evaluates it at the final and at the
best epoch, and writes the run folder of :mod:`tlkit.runs`. Nothing is
written until training has finished.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlkit.heads.splits import SplitPlan, plan_splits
from tlkit.heads.store import head_class, save_head
from tlkit.runs import HeadPart, RunConfig, RunWriter, build_metrics, eval_fingerprint, now, package_versions

DEFAULT_CACHE = "cache/feats.h5"


@dataclass
class FitResult:
    run_dir: Path
    head: str
    estimator: object
    config: RunConfig
    metrics: dict
    plan: SplitPlan


def fit_head(
    head: str,
    cache_path: str | Path = DEFAULT_CACHE,
    out: str | Path | None = None,
    *,
    params: dict | None = None,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    progress: bool | None = None,
    echo: Callable[[str], None] = lambda msg: None,
) -> FitResult:
    """Train head ``head`` ("linear", "logreg", "quantum") with hyperparameters ``params`` on the cache."""
    from tlkit.cache import load_cache

    estimator = head_class(head)(**(params or {}))
    estimator.check_params()  # bad flags (an unknown device...) fail before anything is read
    run = RunWriter.plan(out, head)  # so does a finished --out: refused before any time is spent training
    cache = load_cache(cache_path)
    plan = plan_splits(cache, val_fraction=val_fraction, split_seed=split_seed)
    echo(plan.describe())

    X_train, y_train = plan.train.features, plan.train.labels
    X_eval, y_eval = plan.eval.features, plan.eval.labels
    if head == "logreg":
        estimator.fit(X_train, y_train)
        proba = estimator.predict_proba(X_eval)
        proba_final = proba_best = proba
        final_epoch = best_epoch = None
        final_loss = best_loss = _log_loss(y_eval, proba)
        history, seconds = [], estimator.training_seconds_
    else:
        with EpochBar(estimator.train_config().epochs, head, progress) as bar:
            estimator.fit(X_train, y_train, eval_set=(X_eval, y_eval), on_epoch=bar)
        proba_final, proba_best = estimator.eval_proba_["final"], estimator.eval_proba_["best"]
        history, seconds = estimator.history_, estimator.training_seconds_
        final_epoch, best_epoch = len(history), estimator.best_epoch_
        final_loss, best_loss = history[-1]["val_loss"], history[best_epoch - 1]["val_loss"]

    run.create()
    weights = save_head(estimator, run)
    config = run_config(head, estimator, cache, plan, weights)
    run.write_config(config)
    run.write_history(history)
    run.write_predictions(plan.eval.paths, y_eval, proba_final, proba_best)
    metrics = build_metrics(
        y_eval, proba_final, proba_best, final_epoch=final_epoch, best_epoch=best_epoch,
        training_seconds=seconds, class_names=cache.class_names, final_loss=final_loss, best_loss=best_loss,
    )
    run.finish(metrics)
    return FitResult(run.path, head, estimator, config, metrics, plan)


def run_config(head: str, estimator, cache, plan: SplitPlan, weights: list[str]) -> RunConfig:
    if head != "logreg":
        details = {"train": estimator.train_config().to_dict()}
    else:
        details = {"logreg": {"C": estimator.C_, "cv_folds": estimator.cv_folds_, "scoring": "neg_log_loss"}}
    if head == "quantum":
        details["circuit_simulator"] = estimator.module_.runner.simulator
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
            cache_provenance=cache.provenance.as_dict(),
            split_source=plan.source,
            val_fraction=plan.val_fraction,
            split_seed=plan.split_seed,
            weights=weights,
        ),
        versions=package_versions("numpy", "torch", "scikit-learn", "pennylane"),
        created=now(),
        details=details,
    )


def summary_table(metrics: dict) -> str:
    """The final and best rows of metrics.json, aligned, for the terminal."""

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    rows = [f"{'':<12}{'epoch':>6}{'accuracy':>10}{'ROC AUC':>9}{'AP':>8}"]
    for label, key in (("final", "final"), ("best (opt.)", "best")):
        m = metrics[key]
        rows.append(f"{label:<12}{fmt(m['epoch'], 'd'):>6}{fmt(m['accuracy'], '.4f'):>10}"
                    f"{fmt(m['roc_auc'], '.4f'):>9}{fmt(m['average_precision'], '.4f'):>8}")
    rows.append(f"training seconds: {metrics['training_seconds']:.2f}   evaluated on {metrics['n_eval']} rows; "
                "'best' picks the epoch on the evaluation set itself (optimistic): quote 'final'")
    return "\n".join(rows)


def _log_loss(y, proba) -> float:
    from sklearn.metrics import log_loss

    return float(log_loss(y, proba, labels=np.arange(proba.shape[1])))


class EpochBar:
    """A tqdm bar over epochs, fed by the training loop's on_epoch callback."""

    def __init__(self, epochs: int, head: str, progress: bool | None):
        from tqdm import tqdm

        enabled = sys.stderr.isatty() if progress is None else progress
        self.bar = tqdm(total=epochs, desc=f"fit-head {head}", unit="epoch", disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True)

    def __call__(self, record) -> None:
        self.bar.set_postfix(loss=f"{record.train_loss:.4f}", val_acc=f"{record.val_acc:.4f}", refresh=False)
        self.bar.update(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()
