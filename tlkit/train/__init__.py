"""The training loop shared by the torch heads and the scratch baseline.

:class:`TrainConfig` (its settings) is light and imported at once; the loop
itself imports torch, so it is imported on first use.
"""

from tlkit.train.config import TrainConfig

_LAZY = ("EpochRecord", "TrainResult", "train_classifier")

__all__ = ["TrainConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        from tlkit.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'tlkit.train' has no attribute {name!r}")
