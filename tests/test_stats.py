"""Intervals across seeds and over evaluation images, the paired bootstrap and the exact McNemar test."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import average_precision_score, roc_auc_score

from tlkit import stats
from tlkit.metrics import classification_metrics


def proba_for(predictions: np.ndarray, n_classes: int = 2, confidence: float = 0.8) -> np.ndarray:
    """Probabilities (n, n_classes) whose predicted class is ``predictions``."""
    out = np.full((len(predictions), n_classes), (1 - confidence) / (n_classes - 1))
    out[np.arange(len(predictions)), predictions] = confidence
    return out


def random_run(n_seeds: int, y: np.ndarray, seed: int, skill: float = 0.8) -> np.ndarray:
    """(n_seeds, n, 2) probabilities right about ``skill`` of the time, different per seed."""
    rng = np.random.default_rng(seed)
    right = rng.random((n_seeds, len(y))) < skill
    positive = np.where(right, y, 1 - y)
    p1 = np.where(positive == 1, 0.5 + 0.5 * rng.random(right.shape), 0.5 * rng.random(right.shape))
    return np.stack([1 - p1, p1], axis=-1)


# --- across seeds ------------------------------------------------------------------------------

def test_seed_interval_is_the_student_t_interval():
    values = [0.90, 0.93, 0.95, 0.91, 0.96]
    got = stats.seed_interval(values)
    low, high = sps.t.interval(0.95, df=4, loc=np.mean(values), scale=sps.sem(values))
    assert got.mean == pytest.approx(np.mean(values))
    assert got.std == pytest.approx(np.std(values, ddof=1))
    assert (got.ci_low, got.ci_high) == (pytest.approx(low), pytest.approx(high))
    assert got.n == 5


def test_seed_interval_with_one_seed_has_no_spread_and_equal_values_zero_width():
    one = stats.seed_interval([0.9])
    assert one.mean == 0.9 and one.std is None and one.ci_low is None and one.ci_high is None
    same = stats.seed_interval([0.9, 0.9, 0.9])
    assert same.std == 0 and same.ci_low == same.ci_high == pytest.approx(0.9)
    undefined = stats.seed_interval([0.9, None])  # e.g. ROC AUC without both classes for some seed
    assert undefined.mean is None and undefined.ci_low is None


# --- bootstrap over images ---------------------------------------------------------------------

def test_bootstrap_is_reproducible_with_its_seed_and_moves_with_another():
    y = np.random.default_rng(0).integers(0, 2, 153)
    probas = random_run(3, y, seed=1)
    a = stats.bootstrap_accuracy_interval(y, probas, seed=7)
    b = stats.bootstrap_accuracy_interval(y, probas, seed=7)
    c = stats.bootstrap_accuracy_interval(y, probas, seed=8)
    assert a == b
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    assert a.ci_low < a.estimate < a.ci_high and a.n_resamples == a.n_valid == 2000


def test_bootstrap_averages_the_seeds_within_each_resample():
    """Seed-averaged accuracy per resample = the resampled mean of per-image correctness averaged over seeds."""
    y = np.random.default_rng(0).integers(0, 2, 60)
    probas = random_run(4, y, seed=2)
    got = stats.bootstrap_accuracy_interval(y, probas, n_resamples=500, seed=3)
    correct = np.stack([(p[:, 1] >= 0.5).astype(int) == y for p in probas])
    assert got.estimate == pytest.approx(correct.mean())
    rows = np.random.default_rng(3).integers(0, len(y), size=(500, len(y)))  # the documented draw
    per_resample = np.array([np.mean([c[r].mean() for c in correct]) for r in rows])
    low, high = np.percentile(per_resample, [2.5, 97.5])
    assert (got.ci_low, got.ci_high) == (pytest.approx(low), pytest.approx(high))


def test_all_right_has_a_zero_width_interval_at_one():
    y = np.arange(40) % 2
    got = stats.bootstrap_accuracy_interval(y, proba_for(y))
    assert got.estimate == got.ci_low == got.ci_high == 1.0


def test_vectorised_roc_auc_equals_scikit_learn_on_every_resample():
    y = np.random.default_rng(0).integers(0, 2, 50)
    probas = random_run(3, y, seed=4)
    probas[:, :10] = 0.5  # ties count one half
    auc = lambda labels, p: roc_auc_score(labels, p[:, 1])  # noqa: E731
    fast = stats.bootstrap_interval(y, probas, "roc_auc", n_resamples=100, seed=5)
    slow = stats.bootstrap_interval(y, probas, auc, n_resamples=100, seed=5)
    assert fast.estimate == pytest.approx(np.mean([auc(y, p) for p in probas]))
    assert (fast.ci_low, fast.ci_high, fast.n_valid) == (pytest.approx(slow.ci_low), pytest.approx(slow.ci_high),
                                                         slow.n_valid)


def test_multiclass_roc_auc_is_the_macro_of_tlkit_metrics():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 45)
    probas = rng.dirichlet([1, 1, 1], size=(2, 45))
    got = stats.bootstrap_interval(y, probas, "roc_auc", n_resamples=10)
    assert got.estimate == pytest.approx(np.mean([classification_metrics(y, p)["roc_auc"] for p in probas]))


def test_resamples_where_the_metric_is_undefined_are_dropped():
    y = np.array([0, 0, 0, 0, 1])  # a resample often misses the single positive
    probas = proba_for(y)
    got = stats.bootstrap_interval(y, probas, "roc_auc", n_resamples=200)
    assert 0 < got.n_valid < 200 and got.ci_low == got.ci_high == 1.0
    ap = stats.bootstrap_interval(y, probas, lambda t, p: average_precision_score(t, p[:, 1]) if t.any() else None,
                                  n_resamples=50)
    assert 0 < ap.n_valid < 50


# --- paired comparison -------------------------------------------------------------------------

def test_identical_runs_differ_by_zero_with_a_zero_width_interval_and_p_one():
    y = np.random.default_rng(0).integers(0, 2, 153)
    probas = random_run(3, y, seed=1)
    diff = stats.paired_bootstrap_difference(y, probas, probas)
    assert diff.estimate == diff.ci_low == diff.ci_high == 0.0
    test = stats.mcnemar_exact(probas[0].argmax(1) == y, probas[0].argmax(1) == y)
    assert test.p == 1.0 and test.n_discordant == 0
    entry = stats.compare(y, probas, probas, run="a", baseline="b")
    assert entry["difference"] == 0 and entry["mcnemar_p"] == 1.0 and not entry["significant"]
    assert stats.verdict(entry) == "not significant"


def test_all_right_against_all_wrong_has_the_known_answer():
    y = np.arange(20) % 2
    right, wrong = proba_for(y), proba_for(1 - y)
    diff = stats.paired_bootstrap_difference(y, right, wrong)
    assert diff.estimate == diff.ci_low == diff.ci_high == 1.0
    test = stats.mcnemar_exact(np.ones(20, bool), np.zeros(20, bool))
    assert (test.b, test.c, test.n_discordant) == (20, 0, 20)
    assert test.p == pytest.approx(2 * 0.5**20)
    entry = stats.compare(y, right, wrong)
    assert entry["significant"] and stats.verdict(entry) == "significant at 5%"
    assert set(entry) >= {"run", "baseline", "metric", "difference", "ci_low", "ci_high", "mcnemar_p", "n_discordant"}


def test_paired_interval_is_narrower_than_the_two_unpaired_ones():
    """Pairing cancels what the images have in common: two similar runs' difference is tight."""
    y = np.random.default_rng(0).integers(0, 2, 153)
    a = random_run(2, y, seed=1)
    b = a.copy()
    b[:, :5] = b[:, :5, ::-1]  # b differs from a on five images only
    diff = stats.paired_bootstrap_difference(y, a, b)
    ia, ib = stats.bootstrap_accuracy_interval(y, a), stats.bootstrap_accuracy_interval(y, b)
    assert diff.ci_high - diff.ci_low < min(ia.ci_high - ia.ci_low, ib.ci_high - ib.ci_low) / 2


@pytest.mark.parametrize("seed", range(5))
def test_mcnemar_agrees_with_scipy_binomtest(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.random(100) < rng.uniform(0.5, 0.95), rng.random(100) < rng.uniform(0.5, 0.95)
    got = stats.mcnemar_exact(a, b)
    n_b, n_c = int(np.sum(a & ~b)), int(np.sum(~a & b))
    assert (got.b, got.c, got.n_discordant) == (n_b, n_c, n_b + n_c)
    assert got.p == pytest.approx(sps.binomtest(min(n_b, n_c), n_b + n_c, 0.5).pvalue)
    assert got.p == pytest.approx(min(1.0, 2 * sps.binom.cdf(min(n_b, n_c), n_b + n_c, 0.5)))


def test_seeds_summary_matches_each_seeds_metrics():
    y = np.random.default_rng(0).integers(0, 2, 80)
    probas = random_run(4, y, seed=3)
    summary = stats.seeds_summary(y, probas, n_resamples=200)
    per_seed = [classification_metrics(y, p) for p in probas]
    for name in ("accuracy", "roc_auc", "average_precision"):
        assert summary[name]["mean"] == pytest.approx(np.mean([m[name] for m in per_seed]))
        assert summary[name]["ci_low"] < summary[name]["mean"] < summary[name]["ci_high"]
    assert summary["images"]["accuracy"]["estimate"] == pytest.approx(summary["accuracy"]["mean"])


def test_bad_shapes_are_value_errors():
    with pytest.raises(ValueError, match="expected labels"):
        stats.bootstrap_accuracy_interval(np.zeros(3, int), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="differ in shape"):
        stats.paired_bootstrap_difference(np.zeros(3, int), np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="no evaluation images"):
        stats.bootstrap_accuracy_interval(np.zeros(0, int), np.zeros((0, 2)))
