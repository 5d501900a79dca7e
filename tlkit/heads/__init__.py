"""Stage two: heads trained on cached features (``tlkit fit-head``).

Each head is a scikit-learn classifier over feature arrays, declared once in
:mod:`tlkit.heads.registry`::

    from tlkit.cache import load_cache
    from tlkit.heads import BottleneckHead, LinearHead, LogRegHead, QuantumHead, load_head

    cache = load_cache("cache/feats.h5")
    head = QuantumHead(seed=0).fit(cache["train"].features, cache["train"].labels)
    proba = head.predict_proba(cache["val"].features)

    head = load_head("runs/quantum-20250101-120000")   # a fit-head run folder

    heads = QuantumHead().fit_seeds(X, y, seeds=range(10))   # ten fitted heads, one vectorised pass

    result = search(LinearHead(), X, y, {"lr": [1e-3, 1e-2, 1e-1]}, cv=5, seeds=range(5))  # GridSearchCV's protocol
    result.best_params_, result.cv_results_["mean_test_score"]

Each name is imported on first use: ``from tlkit.heads import LogRegHead``
loads scikit-learn but neither torch nor PennyLane, and ``tlkit fit-head``
(whose command, :mod:`tlkit.heads.cli`, imports this package) loads only
what the chosen head needs.
"""

from __future__ import annotations

_LAZY = {
    "LinearHead": "tlkit.heads.linear",
    "LogRegHead": "tlkit.heads.logreg",
    "QuantumHead": "tlkit.heads.quantum",
    "BottleneckHead": "tlkit.heads.bottleneck",
    "SVCHead": "tlkit.heads.svc",
    "MLPHead": "tlkit.heads.mlp",
    "Head": "tlkit.heads.estimator",
    "TorchHead": "tlkit.heads.base",
    "HeadError": "tlkit.errors",
    "HEADS": "tlkit.heads.registry",
    "get_spec": "tlkit.heads.registry",
    "head_class": "tlkit.heads.registry",
    "load_head": "tlkit.heads.registry",
    "save_head": "tlkit.heads.registry",
    "fit_head": "tlkit.heads.fit",
    "search": "tlkit.heads.sweep",
    "SearchResult": "tlkit.heads.sweep",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tlkit.heads' has no attribute {name!r}")
