"""``tlkit predict``: labels and class probabilities for new images from a finished run.

This package is imported when the CLI starts; torch is imported only when
:func:`predict_images` runs.
"""

from __future__ import annotations


def __getattr__(name):
    if name in {"predict_images", "load_predictor"}:
        from tlkit.predict import predictor

        return getattr(predictor, name)
    raise AttributeError(name)


__all__ = ["load_predictor", "predict_images"]
