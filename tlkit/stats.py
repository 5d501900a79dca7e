"""How sure is a number: intervals across seeds and over evaluation images, and paired tests.

One evaluation set of 153 images puts one image at 0.65 accuracy points, so
a single run's accuracy says little on its own. Three questions, three tools:

* how much does the result move with the seed?  :func:`seed_interval`
  (mean, standard deviation and a Student-t interval across seeds);
* how much would it move on other images like these?
  :func:`bootstrap_interval` (a bootstrap over evaluation images, the
  seeds averaged within each resample);
* is head A better than head B on these images?
  :func:`paired_bootstrap_difference` (the same resamples for both) and
  :func:`mcnemar_exact` (exact McNemar test on one seed's predictions).

Everything takes plain numpy arrays: ``labels`` are class indices (n,), and
probabilities are (n, n_classes) for one seed or (n_seeds, n, n_classes) for
many. Predictions come from :func:`tlkit.metrics.predict_from_proba` (with two
classes, positive at probability >= 0.5), so accuracy here is the accuracy
``metrics.json`` reports. :func:`seeds_summary` and :func:`compare` assemble
the blocks that ``metrics.json`` and ``report.json`` hold.

Why the bootstrap is drawn here and not by ``scipy.stats.bootstrap``: the
draw itself is one line of numpy (``Generator.integers``, as scipy does), and
doing it here keeps three things scipy's percentile method does not give
together: the *same* image resamples for every run compared on one
evaluation set (a seed and an image count fix them), resamples where a
metric is undefined (ROC AUC of a resample holding one class) dropped
rather than turning the interval into NaN, and bounded memory on large
evaluation sets. The distributions themselves (Student t, binomial) are
scipy's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

from tlkit.metrics import predict_from_proba

CONFIDENCE = 0.95
N_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
_CHUNK_ENTRIES = 1 << 22  # resampled indices held at once (32 MiB of int64)

Metric = Callable[[np.ndarray, np.ndarray], float]  # (labels, proba of one seed) -> value


@dataclass(frozen=True)
class SeedInterval:
    """A metric across seeds. With one seed (or an undefined metric) there is no spread:
    ``std``, ``ci_low`` and ``ci_high`` are None."""

    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    confidence: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BootstrapInterval:
    """A percentile bootstrap interval over evaluation images.

    ``estimate`` is the value on the evaluation set itself (seeds averaged);
    ``n_valid`` is the number of resamples where the metric was defined
    (all of them for accuracy).
    """

    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    n_resamples: int
    n_valid: int
    confidence: float
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test. ``b``: images A gets right and B wrong; ``c``: the reverse."""

    p: float
    n_discordant: int
    b: int
    c: int


# --- across seeds -----------------------------------------------------------------------------

def seed_interval(values, confidence: float = CONFIDENCE) -> SeedInterval:
    """Mean, standard deviation (ddof=1) and Student-t interval of one value per seed.

    One seed: mean only (a spread needs two values; reporting 0 would claim a
    certainty nobody measured). Any value None or NaN (a metric undefined for
    some seed, such as ROC AUC without both classes): everything None.
    Identical values give std 0 and an interval of zero width.
    """
    raw = list(values)
    n = len(raw)
    if n == 0:
        raise ValueError("seed_interval needs at least one value")
    if any(v is None for v in raw) or np.isnan(np.asarray(raw, dtype=np.float64)).any():
        return SeedInterval(None, None, None, None, n, confidence)
    x = np.asarray(raw, dtype=np.float64)
    mean = float(x.mean())
    if n == 1:
        return SeedInterval(mean, None, None, None, 1, confidence)
    std = float(x.std(ddof=1))
    # t.ppf, not t.interval: the latter gives NaN for a zero scale, and equal values deserve a zero-width interval.
    half = float(sps.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / math.sqrt(n)
    return SeedInterval(mean, std, mean - half, mean + half, n, confidence)


# --- over evaluation images -------------------------------------------------------------------

def bootstrap_interval(labels, proba_per_seed, metric: str | Metric = "accuracy", *, n_resamples: int = N_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> BootstrapInterval:
    """Percentile bootstrap over evaluation images of a metric averaged over seeds.

    Each resample draws n image indices with replacement; within it every
    seed's metric is computed on those images and the seeds are averaged;
    the interval is the (1 - confidence)/2 and (1 + confidence)/2 percentiles
    of the resampled values. ``metric`` is one of

    * ``"accuracy"``: vectorised over all resamples at once;
    * ``"roc_auc"``: vectorised too, as the Mann-Whitney rank statistic
      (ties count one half, which is exactly ``roc_auc_score``; with more
      than two classes the one-vs-rest macro mean of :mod:`tlkit.metrics`);
    * a callable ``metric(labels, proba) -> float`` for one seed, e.g.
      ``lambda y, p: average_precision_score(y, p[:, 1])``, called once per
      resample and seed (a Python loop: seconds, not milliseconds).

    A resample where the metric is undefined (one class only: ROC AUC, or a
    callable raising ValueError or returning NaN) is dropped; ``n_valid``
    counts those kept. Same inputs and ``seed``: the same interval, and the
    same resamples whatever the metric.
    """
    y, probas = _check(labels, proba_per_seed)
    estimate = float(_resampled(metric, y, probas, np.arange(len(y))[None])[0])
    values = np.concatenate([_resampled(metric, y, probas, rows) for rows in _resample_chunks(len(y), n_resamples, seed)])
    return _interval(estimate, values, n_resamples, confidence, seed)


def bootstrap_accuracy_interval(labels, proba_per_seed, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                                confidence: float = CONFIDENCE) -> BootstrapInterval:
    """Accuracy averaged over seeds, with its bootstrap interval over evaluation images."""
    return bootstrap_interval(labels, proba_per_seed, "accuracy", n_resamples=n_resamples, seed=seed,
                              confidence=confidence)


def paired_bootstrap_difference(labels, proba_a_per_seed, proba_b_per_seed, metric: str | Metric = "accuracy", *,
                                n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                                confidence: float = CONFIDENCE) -> BootstrapInterval:
    """Difference of a metric averaged over seeds, A minus B, with a paired bootstrap interval.

    Paired: every resample uses the same images for both runs, so what the
    images have in common (an easy set, a hard set) cancels out of the
    difference. The two runs may have different numbers of seeds; each is
    averaged over its own seeds within a resample.
    """
    y, probas_a = _check(labels, proba_a_per_seed)
    _, probas_b = _check(labels, proba_b_per_seed)
    if probas_a.shape[1:] != probas_b.shape[1:]:
        raise ValueError(f"the two runs' probabilities differ in shape: {probas_a.shape[1:]} and {probas_b.shape[1:]}")

    def difference(rows):
        return _resampled(metric, y, probas_a, rows) - _resampled(metric, y, probas_b, rows)

    estimate = float(difference(np.arange(len(y))[None])[0])
    values = np.concatenate([difference(rows) for rows in _resample_chunks(len(y), n_resamples, seed)])
    return _interval(estimate, values, n_resamples, confidence, seed)


# --- paired test on one seed ------------------------------------------------------------------

def mcnemar_exact(correct_a, correct_b) -> McNemar:
    """Exact (binomial) McNemar test of two classifiers on the same images.

    Only discordant images count: b = A right and B wrong, c = the reverse.
    Under "equally good" each discordant image goes either way with
    probability 1/2, so p = min(1, 2 * BinomCDF(min(b, c); b + c, 1/2)),
    which is ``scipy.stats.binomtest``'s two-sided p-value; p = 1 when
    there is no discordant image.
    """
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape or a.ndim != 1:
        raise ValueError(f"correct_a and correct_b must be 1-d and of one length, got {a.shape} and {b_.shape}")
    b = int(np.count_nonzero(a & ~b_))
    c = int(np.count_nonzero(~a & b_))
    n = b + c
    p = 1.0 if n == 0 else float(min(1.0, sps.binomtest(min(b, c), n, 0.5).pvalue))
    return McNemar(p=p, n_discordant=n, b=b, c=c)


# --- the blocks for metrics.json and report.json ---------------------------------------------

def seeds_summary(labels, proba_per_seed, *, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                  confidence: float = CONFIDENCE) -> dict:
    """The ``summary`` block of a run: per metric the across-seed interval, plus the image bootstrap
    of accuracy.

        {"accuracy": {"mean", "std", "ci_low", "ci_high", "n", "confidence"},
         "roc_auc": {...}, "average_precision": {...},
         "images": {"accuracy": {"estimate", "ci_low", "ci_high", "n_resamples", ...}}}

    The per-seed metrics are :func:`tlkit.metrics.classification_metrics`'s,
    so they match each seed's ``final`` block.
    """
    from tlkit.metrics import classification_metrics

    y, probas = _check(labels, proba_per_seed)
    per_seed = [classification_metrics(y, p) for p in probas]
    summary = {name: seed_interval([m[name] for m in per_seed], confidence).to_dict()
               for name in ("accuracy", "roc_auc", "average_precision")}
    summary["images"] = {"accuracy": bootstrap_accuracy_interval(y, probas, n_resamples, seed, confidence).to_dict()}
    return summary


def compare(labels, proba_run_per_seed, proba_baseline_per_seed, *, run: str = "", baseline: str = "",
            n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> dict:
    """One entry of ``report.json``'s ``comparisons``: run minus baseline in final accuracy.

    The interval is the paired bootstrap over evaluation images (seeds
    averaged within each resample); McNemar uses each run's *first* seed
    (seed 0 of ``--seeds 10``). ``significant`` is True when both say so at
    the 5% level (the 95% interval excludes 0 and p < 0.05): either alone
    can be lucky, and a reader should not have to reconcile them.
    """
    y, probas_run = _check(labels, proba_run_per_seed)
    _, probas_base = _check(labels, proba_baseline_per_seed)
    diff = paired_bootstrap_difference(y, probas_run, probas_base, n_resamples=n_resamples, seed=seed,
                                       confidence=confidence)
    test = mcnemar_exact(_correct(y, probas_run[:1])[0], _correct(y, probas_base[:1])[0])
    excludes_zero = diff.ci_low is not None and (diff.ci_low > 0 or diff.ci_high < 0)
    return {
        "run": run, "baseline": baseline, "metric": "accuracy", "difference": diff.estimate,
        "ci_low": diff.ci_low, "ci_high": diff.ci_high, "mcnemar_p": test.p, "n_discordant": test.n_discordant,
        "significant": bool(excludes_zero and test.p < 0.05),
    }


def verdict(comparison: dict) -> str:
    """The plain words for a :func:`compare` entry."""
    return "significant at 5%" if comparison["significant"] else "not significant"


# --- internals --------------------------------------------------------------------------------

def _check(labels, proba_per_seed) -> tuple[np.ndarray, np.ndarray]:
    """labels (n,) int64 and probabilities (n_seeds, n, n_classes) float64."""
    y = np.asarray(labels)
    probas = np.asarray(proba_per_seed, dtype=np.float64)
    if probas.ndim == 2:
        probas = probas[None]
    if y.ndim != 1 or probas.ndim != 3 or probas.shape[1] != len(y) or probas.shape[0] == 0:
        raise ValueError(f"expected labels (n,) and probabilities (n, classes) or (seeds, n, classes); "
                         f"got {y.shape} and {np.shape(proba_per_seed)}")
    if len(y) == 0:
        raise ValueError("there are no evaluation images to compute an interval on")
    return y.astype(np.int64), probas


def _correct(y: np.ndarray, probas: np.ndarray) -> np.ndarray:
    """(n_seeds, n) bool: each seed's prediction is right."""
    return np.stack([predict_from_proba(p) == y for p in probas])


def _resample_chunks(n: int, n_resamples: int, seed: int):
    """The bootstrap's image indices as (k, n) chunks of resamples; fixed by (n, n_resamples, seed)."""
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ENTRIES // n)
    for start in range(0, n_resamples, chunk):
        yield rng.integers(0, n, size=(min(chunk, n_resamples - start), n))


def _resampled(metric, y: np.ndarray, probas: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The metric, averaged over seeds, on each resample of ``rows`` (k, n): (k,), NaN where undefined."""
    if isinstance(metric, str) and metric == "accuracy":
        per_image = _correct(y, probas).mean(axis=0)  # averaging seeds per image = averaging seed accuracies
        return per_image[rows].mean(axis=1)
    if isinstance(metric, str) and metric == "roc_auc":
        step = max(1, _CHUNK_ENTRIES // (rows.shape[1] * probas.shape[0] * probas.shape[2]))
        return np.concatenate([_roc_auc(y[part], probas[:, part]).mean(axis=0) for part in np.split(
            rows, range(step, len(rows), step))])
    if not callable(metric):
        raise ValueError(f"metric must be 'accuracy', 'roc_auc' or a callable (labels, proba) -> float, got {metric!r}")
    return np.array([_seed_mean(metric, y, probas, r) for r in rows])


def _seed_mean(metric: Metric, y: np.ndarray, probas: np.ndarray, rows: np.ndarray) -> float:
    """A callable metric on one resample, averaged over seeds; NaN where it is undefined."""
    values = []
    for proba in probas:
        try:
            value = metric(y[rows], proba[rows])
        except ValueError:  # e.g. ROC AUC of a resample holding one class
            return float("nan")
        values.append(np.nan if value is None else float(value))
    return float(np.mean(values))


def _roc_auc(y: np.ndarray, probas: np.ndarray) -> np.ndarray:
    """ROC AUC of each seed on each resample: y (k, n), probas (S, k, n, C) -> (S, k), NaN where undefined.

    AUC = (sum of the positives' ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg),
    ranks averaged over ties (Mann-Whitney U).
    """
    n_classes = probas.shape[-1]
    columns = [1] if n_classes == 2 else range(n_classes)
    per_class = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for c in columns:
            positive = (y == c)[None]  # (1, k, n)
            ranks = sps.rankdata(probas[..., c], axis=-1)  # (S, k, n)
            n_pos = positive.sum(axis=-1)
            n_neg = y.shape[-1] - n_pos
            u = (ranks * positive).sum(axis=-1) - n_pos * (n_pos + 1) / 2
            per_class.append(np.where(n_pos * n_neg > 0, u / (n_pos * n_neg), np.nan))
    stacked = np.stack(per_class)  # (classes, S, k)
    if n_classes == 2:
        return stacked[0]
    # One-vs-rest macro mean over the classes present, as tlkit.metrics: a class is defined exactly when
    # it is present and another one is too, so all-NaN means fewer than two classes (undefined).
    defined = (~np.isnan(stacked)).sum(axis=0)
    return np.where(defined > 0, np.nansum(stacked, axis=0) / np.maximum(defined, 1), np.nan)


def _interval(estimate: float, values: np.ndarray, n_resamples: int, confidence: float, seed: int) -> BootstrapInterval:
    estimate = None if np.isnan(estimate) else estimate  # JSON has no NaN
    valid = values[~np.isnan(values)]
    if not len(valid):
        return BootstrapInterval(estimate, None, None, n_resamples, 0, confidence, seed)
    low, high = np.percentile(valid, [50 * (1 - confidence), 50 * (1 + confidence)])
    return BootstrapInterval(estimate, float(low), float(high), n_resamples, int(len(valid)), confidence, seed)
