"""scikit-learn's own estimator checks (``parametrize_with_checks``) for every head in the registry.

Every check passes except the few named in ``EXPECTED_FAILURES``, each with
its reason. They are strict: a listed check that starts passing fails the
suite, so the list stays true. Heads are checked with small settings (2
epochs, 4 values of C) to keep the whole file fast.

``check_estimators_unfitted`` is the one that found a real bug: ``predict``
before ``fit`` raised AttributeError instead of NotFittedError, for every head.
"""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from tlkit.heads.registry import HEADS

# Only what makes a fit quick; every other hyperparameter stays at its declared default.
QUICK = {"epochs": 2, "Cs": 4}

EXPECTED_FAILURES = {
    "quantum": {
        "check_classifiers_train": (
            "requires 83% training accuracy; the dressed circuit starts from near-zero weights "
            "(q_delta 0.01) and 2 epochs at lr 0.001 do not get it there (5 epochs do, at 2.5x the time)"
        ),
    },
    "bottleneck": {
        "check_classifiers_train": (
            "requires 83% training accuracy; the quantum head's dressing with a 4-wide classical middle layer "
            "needs 3 epochs at lr 0.001 to get there, not 2 (the quick setting every torch head is checked with)"
        ),
    },
}


def _quick(spec):
    names = {p.name for p in spec.params}
    return spec.build({k: v for k, v in QUICK.items() if k in names})


def _expected_failures(estimator) -> dict[str, str]:
    return EXPECTED_FAILURES.get(estimator.spec.name, {})


@parametrize_with_checks([_quick(spec) for spec in HEADS.values()], expected_failed_checks=_expected_failures,
                         xfail_strict=True)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_the_expected_failures_name_real_heads():
    assert set(EXPECTED_FAILURES) <= set(HEADS)

