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

from tlkit.heads.estimator import reporting_epochs
from tlkit.heads.registry import get_spec, save_head
from tlkit.heads.splits import SplitPlan, plan_splits
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
    """Train head ``head`` (a name in :data:`tlkit.heads.registry.HEADS`) with hyperparameters ``params``."""
    from tlkit.cache import load_cache

    estimator = get_spec(head).build(params)
    estimator.check_params()  # bad flags (an unknown device...) fail before anything is read
    run = RunWriter.plan(out, head)  # so does a finished --out: refused before any time is spent training
    cache = load_cache(cache_path)
    plan = plan_splits(cache, val_fraction=val_fraction, split_seed=split_seed)
    echo(plan.describe())

    y_eval = plan.eval.labels
    with EpochBar(head, progress) as bar, reporting_epochs(bar):
        estimator.fit(plan.train.features, plan.train.labels, eval_set=(plan.eval.features, y_eval))
    evaluation = estimator.evaluation_

    run.create()
    weights = save_head(estimator, run)
    config = run_config(head, estimator, cache, plan, weights)
    run.write_config(config)
    run.write_history(estimator.history_)
    run.write_predictions(plan.eval.paths, y_eval, evaluation.final_proba, evaluation.best_proba)
    metrics = build_metrics(
        y_eval, evaluation.final_proba, evaluation.best_proba, final_epoch=evaluation.final_epoch,
        best_epoch=evaluation.best_epoch, training_seconds=estimator.training_seconds_,
        class_names=cache.class_names, final_loss=evaluation.final_loss, best_loss=evaluation.best_loss,
    )
    run.finish(metrics)
    return FitResult(run.path, head, estimator, config, metrics, plan)


def run_config(head: str, estimator, cache, plan: SplitPlan, weights: list[str]) -> RunConfig:
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
        details=estimator.run_details(),
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
