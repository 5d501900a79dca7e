"""Did a run train at all? Three checks on every seed, from what every run already has.

A head that never left its start still ends with an accuracy, and a table
compares it with the others as if it had trained. These checks say so:

* **did not learn**: the final train loss is within 1% of the loss of
  predicting the class frequencies (the entropy of the train labels: any
  model whose predictions carry nothing about the labels scores at least
  that), or above it; or the train accuracy did not change across epochs
  (a run stuck at 100% from its first epoch excepted). Needs the history:
  heads without epochs (logreg) and runs without the train labels get
  ``flagged: null`` for the part that needs them;
* **one class**: every evaluation prediction is the same class (when the
  evaluation set holds two classes or more);
* **below chance**: the final accuracy is under the majority-class rate of
  the evaluation set (what always answering its largest class scores) and
  its 95% bootstrap interval over the evaluation images
  (:func:`tlkit.stats.bootstrap_accuracy_interval`) excludes that rate.

:func:`check_run` gives the ``health`` block of ``metrics.json`` (one entry
per seed, with the numbers behind each flag); :func:`warning` the one line
``fit-head`` prints; :func:`describe` the words the report puts beside a
flagged run. Imports numpy, scipy and :mod:`tlkit.stats` only.
"""

from __future__ import annotations

import numpy as np

DID_NOT_LEARN, ONE_CLASS, BELOW_CHANCE = "did_not_learn", "one_class", "below_chance"
FLAGS = (DID_NOT_LEARN, ONE_CLASS, BELOW_CHANCE)
WORDS = {DID_NOT_LEARN: "did not learn", ONE_CLASS: "one class", BELOW_CHANCE: "below chance"}
LOSS_TOLERANCE = 0.01  # "within 1% of the loss of predicting the class frequencies"
# What trained the quantum and bottleneck heads on a 10-class cache where the paper's defaults did not
# (bench/bench_health.py, docs/heads.md#when-a-head-learns-nothing).
TRAINS_MANY_CLASSES = "--optimizer adam --lr 0.0003 --step-size 30"
CRITERIA = (
    "did not learn: final train loss within 1% of (or above) the loss of predicting the train class frequencies, "
    "or the same train accuracy in every epoch; one class: every evaluation prediction in one class; "
    "below chance: final accuracy under the evaluation set's majority-class rate, its 95% bootstrap interval "
    "over the images excluding that rate"
)


def class_frequency_loss(train_labels) -> float | None:
    """Cross-entropy (nats) of always predicting the train class frequencies: their entropy."""
    from scipy.stats import entropy

    counts = np.bincount(np.asarray(train_labels, dtype=np.int64))
    return float(entropy(counts[counts > 0])) if counts.sum() else None


def check_seed(labels, proba, history=None, frequency_loss: float | None = None, seed=None) -> dict:
    """The three checks on one seed: evaluation ``labels`` (n,), final ``proba`` (n, classes), its ``history``."""
    from tlkit.metrics import predict_from_proba

    y = np.asarray(labels, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    entry = {"seed": None if seed is None else int(seed),
             DID_NOT_LEARN: _did_not_learn(history or [], frequency_loss)}
    if len(y) == 0:  # no evaluation set: nothing to check the predictions on
        entry[ONE_CLASS] = entry[BELOW_CHANCE] = {"flagged": None, "n": 0}
    else:
        predicted = predict_from_proba(proba)
        classes = np.unique(predicted)
        entry[ONE_CLASS] = {
            "flagged": bool(len(classes) == 1) if len(np.unique(y)) > 1 else None,
            "predicted_classes": int(len(classes)),
            "class": int(classes[0]) if len(classes) == 1 else None,
            "n": int(len(y)),
        }
        entry[BELOW_CHANCE] = _below_chance(y, proba, float((predicted == y).mean()))
    entry["flags"] = [flag for flag in FLAGS if entry[flag]["flagged"]]
    return entry


def _did_not_learn(history: list[dict], frequency_loss: float | None) -> dict:
    if not history:
        return {"flagged": None, "epochs": 0, "reason": "no epochs to judge (a head without epochs)"}
    final_loss = history[-1].get("train_loss")
    accuracies = [r.get("train_acc") for r in history]
    loss_stuck = None
    if frequency_loss is not None and final_loss is not None and np.isfinite(final_loss):
        loss_stuck = bool(final_loss >= (1 - LOSS_TOLERANCE) * frequency_loss)
    elif final_loss is not None and not np.isfinite(final_loss):
        loss_stuck = True  # a loss that went to inf or NaN learned nothing either
    acc_constant = None
    if len(history) > 1 and all(a is not None for a in accuracies):
        acc_constant = bool(max(accuracies) == min(accuracies) and accuracies[0] < 1.0)
    judged = [v for v in (loss_stuck, acc_constant) if v is not None]
    return {
        "flagged": any(judged) if judged else None,
        "final_train_loss": _number(final_loss),
        "class_frequency_loss": frequency_loss,
        "loss_at_class_frequencies": loss_stuck,
        "train_acc_first": _number(accuracies[0]),
        "train_acc_last": _number(accuracies[-1]),
        "train_acc_constant": acc_constant,
        "epochs": len(history),
    }


def _below_chance(y: np.ndarray, proba: np.ndarray, accuracy: float) -> dict:
    from tlkit.stats import CONFIDENCE, bootstrap_accuracy_interval

    rate = float(np.bincount(y).max() / len(y))
    low = high = None
    if accuracy < rate:  # the interval can only exclude the rate from below when the accuracy is under it
        interval = bootstrap_accuracy_interval(y, proba[None])
        low, high = interval.ci_low, interval.ci_high
    return {"flagged": bool(high is not None and high < rate), "accuracy": accuracy, "majority_class_rate": rate,
            "ci_low": low, "ci_high": high, "confidence": CONFIDENCE}


def _number(value):
    return None if value is None or not np.isfinite(value) else float(value)


def check_run(labels, proba_per_seed, *, histories=None, train_labels=None, seeds=None) -> dict:
    """metrics.json's ``health``: every seed's checks and how many seeds each flag caught.

    ``proba_per_seed``: (seeds, n, classes) or (n, classes); ``histories``: one list of epoch records
    (dicts with train_loss, train_acc) per seed, or None; ``train_labels``: the labels trained on, for
    the loss of predicting their frequencies (None: that part of "did not learn" is not judged).
    """
    probas = np.asarray(proba_per_seed, dtype=np.float64)
    probas = probas[None] if probas.ndim == 2 else probas
    histories = list(histories) if histories is not None else [None] * len(probas)
    seeds = list(seeds) if seeds is not None else [None] * len(probas)
    if not len(histories) == len(seeds) == len(probas):
        raise ValueError(f"{len(probas)} seeds of probabilities, {len(histories)} histories, {len(seeds)} seeds")
    frequency_loss = class_frequency_loss(train_labels) if train_labels is not None else None
    entries = [check_seed(labels, p, h, frequency_loss, s) for p, h, s in zip(probas, histories, seeds)]
    return {
        "n_seeds": len(entries),
        "n_flagged": sum(bool(e["flags"]) for e in entries),
        "flags": {flag: sum(flag in e["flags"] for e in entries) for flag in FLAGS},
        "seeds": entries,
        "criteria": CRITERIA,
    }


def describe(health: dict | None) -> str | None:
    """'5 of 5 seeds did not train (did not learn 5, one class 5, below chance 2)', or None if none is flagged."""
    if not health or not health.get("n_flagged"):
        return None
    counts = ", ".join(f"{WORDS[f]} {n}" for f, n in health["flags"].items() if n)
    return f"{health['n_flagged']} of {health['n_seeds']} seed{'s' if health['n_seeds'] > 1 else ''} " \
           f"did not train ({counts})"


def warning(health: dict | None, settings=()) -> str | None:
    """The one line ``fit-head`` prints for a flagged run, with a next step among the head's ``settings``."""
    said = describe(health)
    if said is None:
        return None
    settings = set(settings)
    if {"lr", "optimizer", "step_size"} <= settings:
        step = (f"try {TRAINS_MANY_CLASSES} (it trains the quantum and bottleneck heads on 10 classes where "
                "the defaults do not, docs/heads.md), or a grid over lr, e.g. --grid lr=0.0001,0.0003,0.001,0.01")
    else:  # logreg chooses its own C: what is left to doubt is the features and labels
        step = "check the cache's features and labels (tlkit info CACHE): a head without training settings to change"
    return f"warning: {said}; numbers in metrics.json -> health; {step}"
