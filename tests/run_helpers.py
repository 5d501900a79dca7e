"""Shared builders for the baseline, report and predict tests (no tests here).

Training runs are memoised per session: each distinct (data, settings) run is
trained once however many test files ask for it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlkit.runs import PARTS, HeadPart, RunConfig, RunWriter, build_metrics, eval_fingerprint, seeds_history

_RUNS: dict[tuple, Path] = {}


def scratch_run(tmp_path_factory, data: Path, *, epochs: int = 1, seed: int = 0, extra=()) -> Path:
    """A finished `tlkit train-scratch` run on ``data`` (through the CLI), trained once per session."""
    from click.testing import CliRunner

    from tlkit.cli import main

    key = (str(data), epochs, seed, tuple(extra))
    if key not in _RUNS:
        out = tmp_path_factory.mktemp("scratch") / "run"
        result = CliRunner().invoke(main, ["train-scratch", str(data), "--out", str(out), "--epochs", str(epochs),
                                           "--seed", str(seed), "--no-progress", *extra])
        assert result.exit_code == 0, result.output
        _RUNS[key] = out
    return _RUNS[key]


def fake_run(folder: Path, *, labels, proba_final, proba_best=None, class_names=("ants", "bees"),
             paths=None, kind="head", head="linear", history_epochs=3, seconds=10.0, eval_split="val",
             best_epoch=None, losses=None) -> Path:
    """A run folder written through the run contract (tlkit.runs) with chosen predictions (no training).

    ``proba_final`` of shape (seeds, n, classes) writes a run of that many seeds (0, 1, ...), each seed's
    losses shifted a little so that the seeds differ.
    """
    labels = np.asarray(labels, dtype=np.int64)
    proba_final = np.asarray(proba_final, dtype=np.float64)
    proba_best = proba_final if proba_best is None else np.asarray(proba_best, dtype=np.float64)
    seeds = list(range(len(proba_final))) if proba_final.ndim == 3 else [0]
    paths = paths if paths is not None else [f"{eval_split}/{class_names[y]}/img{i:04d}.jpg" for i, y in enumerate(labels)]
    losses = losses or [1.0 / (e + 1) for e in range(history_epochs)]
    histories = [[{"epoch": e + 1, "lr": 0.001, "train_loss": losses[e] * 1.1 + 0.01 * s,
                   "train_acc": 0.5 + 0.4 * e / max(history_epochs, 1),  # a run that learns (tlkit.health)
                   "val_loss": losses[e] + 0.01 * s, "val_acc": 0.5, "seconds": seconds / max(history_epochs, 1)}
                  for e in range(history_epochs)] for s in seeds]
    history = seeds_history(histories, seeds)
    best_epoch = best_epoch or max(history_epochs, 1)
    if kind == "head":
        part = HeadPart(head=head, cache_provenance={"weights_id": "random:seed=0", "weights_sha256": "0" * 64},
                        seeds=seeds)
    else:
        part = PARTS[kind]()
    run = RunWriter(folder)
    run.create()
    run.write_config(RunConfig(kind=kind, class_names=list(class_names), eval_split=eval_split,
                               eval_fingerprint=eval_fingerprint(paths, labels, class_names), part=part))
    run.write_history(history)
    run.write_predictions(paths, labels, proba_final, proba_best, seeds=seeds)
    run.finish(build_metrics(
        labels, proba_final, proba_best, final_epoch=max(history_epochs, 1), best_epoch=best_epoch,
        training_seconds=seconds, class_names=class_names,
        final_loss=histories[0][-1]["val_loss"] if history else None, best_loss=None, seeds=seeds,
    ))
    return folder


def proba_with_accuracy(labels, n_correct: int, rng) -> np.ndarray:
    """Two-class probabilities whose 0.5-threshold predictions are right for exactly ``n_correct`` images."""
    labels = np.asarray(labels)
    right = np.zeros(len(labels), dtype=bool)
    right[rng.choice(len(labels), n_correct, replace=False)] = True
    confidence = rng.uniform(0.55, 0.99, len(labels))
    p_true = np.where(right, confidence, 1 - confidence)
    p1 = np.where(labels == 1, p_true, 1 - p_true)
    return np.stack([1 - p1, p1], axis=1)


def embedded(tmp_path_factory, data: Path, weights: str = "random") -> Path:
    """`tlkit embed data` into a fresh cache, once per session per (data, weights)."""
    from tlkit.embed import embed

    key = ("cache", str(data), weights)
    if key not in _RUNS:
        out = tmp_path_factory.mktemp("cache") / "feats.h5"
        embed(data, out, weights=weights, seed=0, batch_size=32, workers=1, progress=False, echo=lambda *_: None)
        _RUNS[key] = out
    return _RUNS[key]


def head_run(tmp_path_factory, cache: Path, head: str) -> Path:
    """A finished `tlkit fit-head` run on ``cache`` (through the CLI), once per session."""
    from click.testing import CliRunner

    from tlkit.cli import main

    key = ("head", str(cache), head)
    if key not in _RUNS:
        out = tmp_path_factory.mktemp(head) / "run"
        result = CliRunner().invoke(main, ["fit-head", "--head", head, "--cache", str(cache), "--out", str(out),
                                           "--no-progress"])
        assert result.exit_code == 0, result.output
        _RUNS[key] = out
    return _RUNS[key]
