"""Head weights in the run folder, in formats that load without executing pickled code.

    torch heads:  model.pt       state_dict of the final epoch   (torch.load(..., weights_only=True))
                  model_best.pt  state_dict of the best epoch    (absent without an evaluation set)
    logreg:       model.npz      scaler mean/scale, coefficients, intercepts, classes, C  (allow_pickle=False)

``config.json`` (written by fit-head) names the head and its hyperparameters,
so :func:`load_head` can rebuild the estimator around the weights.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from tlkit.heads.errors import HeadError
from tlkit.runs import MODEL, MODEL_ARRAYS, MODEL_BEST, read_config

TORCH_WEIGHTS = {"final": MODEL, "best": MODEL_BEST}
NPZ_WEIGHTS = MODEL_ARRAYS


def head_class(name: str):
    from tlkit.heads.linear import LinearHead
    from tlkit.heads.logreg import LogRegHead
    from tlkit.heads.quantum import QuantumHead

    classes = {"linear": LinearHead, "logreg": LogRegHead, "quantum": QuantumHead}
    if name not in classes:
        raise HeadError(f"unknown head {name!r} (one of: {', '.join(classes)})")
    return classes[name]


def save_head(estimator, run) -> list[str]:
    """Write the fitted estimator's weights with ``run`` (a RunWriter); returns the file names written."""
    from tlkit.heads.logreg import LogRegHead

    if isinstance(estimator, LogRegHead):
        buf = io.BytesIO()
        np.savez(
            buf, mean=estimator.scaler_.mean_, scale=estimator.scaler_.scale_, var=estimator.scaler_.var_,
            coef=estimator.model_.coef_, intercept=estimator.model_.intercept_,
            classes=np.asarray(estimator.classes_), C=np.float64(estimator.C_),
        )
        run.write_file(NPZ_WEIGHTS, buf.getvalue())
        return [NPZ_WEIGHTS]

    import torch

    written = []
    for which, state in (("final", estimator.module_.state_dict()), ("best", estimator.best_state_dict_)):
        if state is None:
            continue
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in state.items()}, buf)
        run.write_file(TORCH_WEIGHTS[which], buf.getvalue())
        written.append(TORCH_WEIGHTS[which])
    return written


def load_head(run_dir, which: str = "final"):
    """The fitted estimator a ``fit-head`` run saved: ``predict_proba(features)``, ``classes_``.

    ``which="best"`` loads the best-epoch weights of a torch head instead of
    the final ones (logreg has only one set).
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if config.kind != "head":
        raise HeadError(f"{run_dir} holds a {config.kind!r} run, not a fit-head run")
    if which not in TORCH_WEIGHTS:
        raise HeadError(f"which must be 'final' or 'best', got {which!r}")
    part = config.part
    if part.classes is None or part.n_features is None:
        raise HeadError(f"{run_dir} config.json lacks what is needed to rebuild the head (classes, n_features)")
    estimator = head_class(part.head)(**part.head_params)
    classes = np.asarray(part.classes)
    n_features = int(part.n_features)

    if part.head == "logreg":
        return _load_logreg(estimator, run_dir / NPZ_WEIGHTS)
    return _load_torch(estimator, run_dir / TORCH_WEIGHTS[which], classes, n_features)


def _load_logreg(estimator, path: Path):
    from sklearn.preprocessing import StandardScaler

    from tlkit.heads.logreg import fitted_logistic_regression

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        scaler = StandardScaler()
        scaler.mean_, scaler.scale_, scaler.var_ = arrays["mean"], arrays["scale"], arrays["var"]
        scaler.n_features_in_, scaler.n_samples_seen_ = len(arrays["mean"]), 0
        estimator.scaler_ = scaler
        estimator.C_ = float(arrays["C"])
        estimator.model_ = fitted_logistic_regression(estimator.C_, arrays["coef"], arrays["intercept"], arrays["classes"])
    except (OSError, ValueError, KeyError) as exc:
        raise HeadError(f"{path} cannot be loaded: {exc}") from None
    estimator.classes_ = arrays["classes"]
    estimator.n_features_in_ = len(arrays["mean"])
    return estimator


def _load_torch(estimator, path: Path, classes: np.ndarray, n_features: int):
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise HeadError(f"{path} does not exist") from None
    except (OSError, RuntimeError, pickle.UnpicklingError) as exc:
        raise HeadError(f"{path} cannot be loaded: {exc}") from None
    estimator.check_params()
    with torch.random.fork_rng(devices=[]):
        module = estimator._build_module(n_features, len(classes))
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise HeadError(f"{path} does not match the head in config.json: {str(exc).splitlines()[0]}") from None
    module.eval()
    estimator.module_ = module
    estimator.classes_ = classes
    estimator.n_features_in_ = n_features
    return estimator
