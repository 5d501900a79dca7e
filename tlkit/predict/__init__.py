"""``tlkit predict``: labels and class probabilities for new images from a finished run.

``tlkit predict --help`` imports this package (its command is
:mod:`tlkit.predict.cli`): so :func:`load_predictor` and :func:`predict_images`,
which import torch, load on first use, and the help answers at once.
"""

from __future__ import annotations


def __getattr__(name):
    if name in {"predict_images", "load_predictor"}:
        from tlkit.predict import predictor

        return getattr(predictor, name)
    raise AttributeError(name)


__all__ = ["load_predictor", "predict_images"]
